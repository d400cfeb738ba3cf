"""Estimators against closed forms and brute force (SPEC §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from analysis.estimators import (
    exact_log_qz,
    gaussian_kl_to_standard,
    importance_log_px,
    kl_tril_to_standard,
    log_normal_diag,
    log_normal_tril,
    minibatch_log_qz,
    nearest_neighbour_distances,
    pairwise_log_density,
    rate_decomposition,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_tril(n: int, d: int, seed: int, scale: float = 0.5) -> torch.Tensor:
    g = _gen(seed)
    L = torch.randn(n, d, d, generator=g, dtype=F64).tril(-1) * scale
    diag = torch.rand(n, d, generator=g, dtype=F64) + 0.3
    return L + torch.diag_embed(diag)


def _channel_mi(S: torch.Tensor, Sigma: torch.Tensor) -> float:
    """I(x; z) for z = μ + ε, μ ~ N(0, S), ε ~ N(0, Σ): ½ log det(S + Σ) − ½ log det Σ."""
    return 0.5 * (torch.logdet(S + Sigma) - torch.logdet(Sigma)).item()


def _kl_gauss_to_standard(cov: torch.Tensor) -> float:
    """KL(N(0, C) ‖ N(0, I)) = ½ (tr C − d − log det C)."""
    return 0.5 * (torch.trace(cov) - cov.shape[0] - torch.logdet(cov)).item()


# --- densities and KLs -------------------------------------------------------------------

def test_kl_to_standard_known_value_and_torch() -> None:
    mu, lv = torch.ones(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)
    assert torch.allclose(gaussian_kl_to_standard(mu, lv), torch.full((2,), 1.5, dtype=F64))
    g = _gen(0)
    mu, lv = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    ref = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(gaussian_kl_to_standard(mu, lv), ref)


def test_log_normal_diag_matches_torch() -> None:
    g = _gen(1)
    z, mu, lv = (torch.randn(6, 3, generator=g, dtype=F64) for _ in range(3))
    ref = Normal(mu, (0.5 * lv).exp()).log_prob(z).sum(-1)
    assert torch.allclose(log_normal_diag(z, mu, lv), ref)


def test_tril_density_and_kl_match_multivariate_normal() -> None:
    L = _random_tril(5, 3, seed=2)
    g = _gen(3)
    z, mu = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    q = MultivariateNormal(mu, scale_tril=L)
    assert torch.allclose(log_normal_tril(z, mu, L), q.log_prob(z))
    prior = MultivariateNormal(torch.zeros(3, dtype=F64), scale_tril=torch.eye(3, dtype=F64))
    assert torch.allclose(kl_tril_to_standard(mu, L), kl_divergence(q, prior))


def test_pairwise_density_tril_matches_loop_and_diag() -> None:
    L = _random_tril(4, 3, seed=4)
    g = _gen(5)
    z, mu = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    ref = torch.tensor([[MultivariateNormal(mu[j], scale_tril=L[j]).log_prob(z[i]).item()
                         for j in range(4)] for i in range(6)], dtype=F64)
    assert torch.allclose(pairwise_log_density(z, mu, scale_tril=L), ref)
    lv = torch.randn(4, 3, generator=g, dtype=F64)
    diag_L = torch.diag_embed((0.5 * lv).exp())
    assert torch.allclose(pairwise_log_density(z, mu, lv),
                          pairwise_log_density(z, mu, scale_tril=diag_L))


# --- log q(z) ------------------------------------------------------------------------------

def _brute_minibatch_log_qz(z: np.ndarray, mu: np.ndarray, var: np.ndarray, N: int) -> list:
    """The Esmaeili et al. formula written out with explicit loops and math.exp."""
    B, d = z.shape
    out = []
    for i in range(B):
        total = 0.0
        for j in range(B):
            log_q = sum(-0.5 * ((z[i, k] - mu[j, k]) ** 2 / var[j, k]
                                + math.log(2 * math.pi * var[j, k])) for k in range(d))
            weight = 1.0 / N if i == j else (N - 1) / (N * (B - 1))
            total += weight * math.exp(log_q)
        out.append(math.log(total))
    return out


def test_minibatch_log_qz_matches_double_loop() -> None:
    g = _gen(6)
    z, mu = torch.randn(7, 2, generator=g, dtype=F64), torch.randn(7, 2, generator=g, dtype=F64)
    lv = torch.randn(7, 2, generator=g, dtype=F64) * 0.5
    for N in (7, 10, 1000):
        ref = _brute_minibatch_log_qz(z.numpy(), mu.numpy(), lv.exp().numpy(), N)
        got = minibatch_log_qz(z, mu, lv, dataset_size=N)
        assert np.allclose(got.numpy(), ref, rtol=0, atol=1e-10)
        got_tril = minibatch_log_qz(z, mu, scale_tril=torch.diag_embed((0.5 * lv).exp()),
                                    dataset_size=N)
        assert np.allclose(got_tril.numpy(), ref, rtol=0, atol=1e-10)


def test_minibatch_log_qz_with_whole_set_is_exact_and_differentiable() -> None:
    g = _gen(7)
    z, mu = torch.randn(9, 3, generator=g, dtype=F64), torch.randn(9, 3, generator=g, dtype=F64)
    lv = (torch.randn(9, 3, generator=g, dtype=F64) * 0.3).requires_grad_()
    exact = torch.logsumexp(pairwise_log_density(z, mu, lv.detach()), 1) - math.log(9)
    assert torch.allclose(minibatch_log_qz(z, mu, lv, dataset_size=9).detach(), exact)
    assert torch.autograd.gradcheck(
        lambda a, b: minibatch_log_qz(z, a, b, dataset_size=50), (mu.requires_grad_(), lv))


def test_minibatch_log_qz_rejects_bad_sizes() -> None:
    z = torch.zeros(4, 2)
    with pytest.raises(ValueError):
        minibatch_log_qz(z, z, z, dataset_size=3)
    with pytest.raises(ValueError):
        minibatch_log_qz(z[:1], z[:1], z[:1], dataset_size=10)


@pytest.mark.parametrize("covariance", ["diag", "tril"])
def test_exact_log_qz_matches_direct_logsumexp_even_for_tiny_variances(covariance: str) -> None:
    # float64 expansion, no cancellation trouble with σ = 1e-4 posteriors near the origin + 3
    g = _gen(8)
    n, d = 700, 3
    mu = 3.0 + torch.randn(n, d, generator=g, dtype=F64)
    lv = torch.log(torch.rand(n, d, generator=g, dtype=F64) * 1e-2 + 1e-8)
    z = mu + (0.5 * lv).exp() * torch.randn(n, d, generator=g, dtype=F64)
    tril = torch.diag_embed((0.5 * lv).exp()) if covariance == "tril" else None
    args = (lv,) if tril is None else (None,)
    ref = torch.logsumexp(pairwise_log_density(z, mu, *args, scale_tril=tril), 1) - math.log(n)
    assert torch.allclose(exact_log_qz(z, mu, *args, scale_tril=tril), ref, atol=1e-8, rtol=0)


# --- rate decomposition -------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [None, 16])
def test_posteriors_equal_to_prior_give_zero_mi_and_kl(batch_size: int | None) -> None:
    mu, lv = torch.zeros(100, 4), torch.zeros(100, 4)
    out = rate_decomposition(mu, lv, batch_size=batch_size, generator=_gen(0))
    for key in ("rate", "mutual_information", "marginal_kl", "rate_analytic"):
        assert abs(out[key]) < 1e-10, key


@pytest.mark.parametrize("batch_size", [None, 64])
def test_well_separated_posteriors_saturate_at_log_n(batch_size: int | None) -> None:
    N = 300
    mu = 100.0 * torch.randn(N, 4, generator=_gen(1), dtype=F64)
    lv = torch.full((N, 4), math.log(1e-4), dtype=F64)
    out = rate_decomposition(mu, lv, batch_size=batch_size, generator=_gen(2))
    assert out["mutual_information"] == pytest.approx(math.log(N), abs=1e-6)
    assert out["marginal_kl"] == pytest.approx(out["rate"] - math.log(N), abs=1e-6)


@pytest.mark.parametrize(("s2", "v2"), [(0.5, 0.5), (2.0, 0.5)])
def test_gaussian_channel_recovers_closed_form(s2: float, v2: float) -> None:
    # μ ~ N(0, s²I), σ² = v2: I = d/2 log(1 + s²/σ²), q(z) = N(0, (s² + σ²) I). With
    # s² + σ² = 1 the marginal KL is 0; otherwise KL = d/2 (v − 1 − log v). log N = 8.3 and
    # the rate (I + KL) are both far outside the 0.05 tolerance from I.
    N, d = 4000, 2
    mu = math.sqrt(s2) * torch.randn(N, d, generator=_gen(10), dtype=F64)
    lv = torch.full((N, d), math.log(v2), dtype=F64)
    mi, v = d / 2 * math.log(1 + s2 / v2), s2 + v2
    kl = d / 2 * (v - 1 - math.log(v))
    exact = rate_decomposition(mu, lv, batch_size=None, generator=_gen(11))
    mini = rate_decomposition(mu, lv, batch_size=512, generator=_gen(11))
    for out in (exact, mini):
        assert out["mutual_information"] == pytest.approx(mi, abs=0.05)
        assert out["marginal_kl"] == pytest.approx(kl, abs=0.05)
    assert mini["mutual_information"] == pytest.approx(exact["mutual_information"], abs=0.03)


def test_full_covariance_gaussian_channel() -> None:
    N, d = 3000, 2
    A = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=F64)
    S = A @ A.T
    Sigma = torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64)
    mu = torch.randn(N, d, generator=_gen(12), dtype=F64) @ A.T
    L = torch.linalg.cholesky(Sigma).expand(N, d, d)
    out = rate_decomposition(mu, scale_tril=L, batch_size=None, generator=_gen(13))
    assert out["mutual_information"] == pytest.approx(_channel_mi(S, Sigma), abs=0.05)
    assert out["marginal_kl"] == pytest.approx(_kl_gauss_to_standard(S + Sigma), abs=0.05)


@pytest.mark.parametrize("batch_size", [None, 32])
def test_decomposition_identity_and_saturation_bound(batch_size: int | None) -> None:
    g = _gen(14)
    for spread, log_sigma in [(0.1, 0.0), (3.0, -3.0), (30.0, -6.0)]:
        N = 200
        mu = spread * torch.randn(N, 3, generator=g, dtype=F64)
        lv = 2 * log_sigma + torch.randn(N, 3, generator=g, dtype=F64) * 0.5
        out = rate_decomposition(mu, lv, batch_size=batch_size, generator=g)
        total = out["mutual_information"] + out["marginal_kl"]
        assert total == pytest.approx(out["rate"], abs=1e-9)
        assert out["mutual_information"] <= math.log(N) + 1e-9


def test_one_batch_of_everything_equals_exact_and_tril_equals_diag() -> None:
    g = _gen(15)
    mu, lv = torch.randn(50, 3, generator=g, dtype=F64), torch.randn(50, 3, generator=g) * 0.3
    exact = rate_decomposition(mu, lv, batch_size=None, generator=_gen(1))
    whole = rate_decomposition(mu, lv, batch_size=50, generator=_gen(1))
    L = torch.diag_embed((0.5 * lv.double()).exp())
    tril = rate_decomposition(mu, scale_tril=L, batch_size=None, generator=_gen(1))
    for key in exact:
        assert whole[key] == pytest.approx(exact[key], abs=1e-9)
        assert tril[key] == pytest.approx(exact[key], abs=1e-9)


def test_leftover_single_example_joins_a_batch() -> None:
    mu, lv = torch.randn(33, 2, generator=_gen(16)), torch.zeros(33, 2)
    out = rate_decomposition(mu, lv, batch_size=8, generator=_gen(0))  # 4 × 8 + 1
    assert math.isfinite(out["mutual_information"])
    with pytest.raises(ValueError):
        rate_decomposition(mu, lv, batch_size=1)


# --- importance sampling ------------------------------------------------------------------

def _linear_gaussian(seed: int, n: int = 400) -> dict:
    """x = W z + b + ε, z ~ N(0, I₂), ε ~ N(0, σ² I₅): p(x) = N(b, W Wᵀ + σ² I)."""
    g = _gen(seed)
    W, b, sigma = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, generator=g,
                                                                           dtype=F64), 0.5
    z = torch.randn(n, 2, generator=g, dtype=F64)
    x = z @ W.T + b + sigma * torch.randn(n, 5, generator=g, dtype=F64)
    log_px = MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(5, dtype=F64)).log_prob(x)
    cov = torch.linalg.inv(torch.eye(2, dtype=F64) + W.T @ W / sigma**2)
    mean = (x - b) @ W @ cov / sigma**2  # cov symmetric

    def log_lik(xc: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        return Normal(zc @ W.T + b, sigma).log_prob(xc).sum(-1)  # (k, b, 5) -> (k, b)

    return dict(W=W, b=b, sigma=sigma, x=x, log_px=log_px, cov=cov, mean=mean, log_lik=log_lik)


def test_importance_sampling_is_tight_with_exact_posterior() -> None:
    m = _linear_gaussian(0, n=50)
    L = torch.linalg.cholesky(m["cov"]).expand(50, 2, 2)
    est = importance_log_px(m["x"], m["mean"], None, m["log_lik"], scale_tril=L,
                            num_samples=7, chunk_size=20, generator=_gen(1))
    assert torch.allclose(est, m["log_px"], atol=1e-9, rtol=0)


def test_importance_sampling_does_not_depend_on_chunk_size() -> None:
    """The chunking is a memory knob: every chunk size sees the same K draws per example."""
    m = _linear_gaussian(2, n=30)
    lv = torch.diagonal(m["cov"]).log().expand(30, 2) + 1.0  # not the exact posterior
    est = [importance_log_px(m["x"], m["mean"], lv, m["log_lik"], num_samples=9,
                             chunk_size=c, generator=_gen(4)) for c in (1, 7, 45, 10_000)]
    for e in est[1:]:
        torch.testing.assert_close(e, est[0], rtol=0, atol=1e-12)
    assert est[0].std() > 0.1  # examples differ: a broken slice would show


def test_importance_sampling_rises_from_elbo_toward_log_px() -> None:
    m = _linear_gaussian(1)
    var = torch.diagonal(m["cov"]).expand(400, 2) * 4.0  # too wide: KL(q‖post) > 1 nat
    lv = var.log()
    W, b, s = m["W"], m["b"], m["sigma"]
    resid = m["x"] - m["mean"] @ W.T - b
    expected_ll = (-2.5 * math.log(2 * math.pi * s**2)
                   - (resid.square().sum(1) + (var * W.square().sum(0)).sum(1)) / (2 * s**2))
    kl = kl_divergence(Normal(m["mean"], var.sqrt()), Normal(0.0, 1.0)).sum(1)
    elbo = (expected_ll - kl).mean().item()
    log_px = m["log_px"].mean().item()
    est = {k: importance_log_px(m["x"], m["mean"], lv, m["log_lik"], num_samples=k,
                                chunk_size=50_000, generator=_gen(k)).mean().item()
           for k in (1, 10, 1000)}
    assert log_px - elbo > 1.0
    assert est[1] == pytest.approx(elbo, abs=0.15)
    assert elbo + 0.3 < est[10] < est[1000] <= log_px + 0.01
    assert log_px - est[1000] < 0.25 * (log_px - est[10])


def test_importance_sampling_stays_a_bound_for_float32_posteriors_far_below_ulp() -> None:
    """σ = e⁻²⁰ ≪ float32 spacing of μ (~6e-8): z = μ + σε must not round to μ.

    Likelihood −½‖z − c‖² is flat on the posterior's scale, so log wₖ = A + ½‖εₖ‖² and the
    estimate is at least the mean of its own log weights, whose expectation is the ELBO
    (closed form below; its sample mean over K = 200 is within ±0.2 of it). Float32 and
    float64 copies of the same posterior give the same estimate.
    """
    d, n = 10, 4
    c = torch.linspace(-1, 1, d, dtype=F64).expand(n, d)
    mu = (c / 2).float()
    lv = torch.full((n, d), -40.0)

    def log_lik(xc: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z - c).square().sum(-1)

    mu64, lv64 = mu.double(), lv.double()
    elbo = (-0.5 * ((mu64 - c).square().sum(-1) + lv64.exp().sum(-1))
            - kl_divergence(Normal(mu64, (0.5 * lv64).exp()), Normal(0.0, 1.0)).sum(1))
    est = {t: importance_log_px(torch.zeros(n, 1), mu.to(t), lv.to(t), log_lik,
                                num_samples=200, generator=_gen(3))
           for t in (torch.float32, F64)}
    assert torch.equal(est[torch.float32], est[F64])
    assert (est[torch.float32] > elbo - 1.0).all()


# --- nearest neighbours -------------------------------------------------------------------

@pytest.mark.parametrize("as_tensor", [False, True])
def test_nearest_neighbours_match_brute_force_with_duplicates(as_tensor: bool) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(300, 4, 4, 3), dtype=np.uint8)
    test = rng.integers(0, 256, size=(90, 4, 4, 3), dtype=np.uint8)
    test[::10] = train[[3, 50, 51, 100, 150, 200, 250, 251, 299]]
    if as_tensor:
        train, test = torch.from_numpy(train).float() / 255, torch.from_numpy(test).float() / 255
    dist, index = nearest_neighbour_distances(test, train, chunk_size=64)
    a = torch.as_tensor(np.asarray(test), dtype=F64).reshape(90, 1, -1)
    b = torch.as_tensor(np.asarray(train), dtype=F64).reshape(1, 300, -1)
    full = (a - b).square().sum(-1).sqrt()  # brute force, no matmul cancellation
    ref_d, ref_i = full.min(1)
    assert torch.equal(index, ref_i)
    assert torch.allclose(dist, ref_d, atol=1e-9, rtol=0)
    assert torch.all(dist[::10] == 0)
    assert torch.equal(index[::10], torch.tensor([3, 50, 51, 100, 150, 200, 250, 251, 299]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    mu, lv = torch.randn(3000, 4, generator=_gen(20)), torch.randn(3000, 4, generator=_gen(21))
    for batch_size in (None, 256):
        cpu = rate_decomposition(mu, lv, batch_size=batch_size, generator=_gen(1))
        gpu = rate_decomposition(mu.to("cuda"), lv.to("cuda"), batch_size=batch_size,
                                 generator=_gen(1))
        for key in cpu:
            assert gpu[key] == pytest.approx(cpu[key], abs=1e-8)
    test, train = torch.rand(50, 12, generator=_gen(22)), torch.rand(400, 12, generator=_gen(23))
    d_cpu, i_cpu = nearest_neighbour_distances(test, train, chunk_size=64)
    d_gpu, i_gpu = nearest_neighbour_distances(test.to("cuda"), train.to("cuda"), chunk_size=64)
    assert torch.equal(i_cpu, i_gpu) and torch.allclose(d_cpu, d_gpu)


def test_subset_of_a_larger_set_saturates_at_log_of_the_whole_set():
    """n well-separated encodings drawn from a set of N: Î = log N (not log n)."""
    from analysis.estimators import rate_decomposition

    g = torch.Generator().manual_seed(0)
    n, N, d = 300, 50_000, 4
    mu = torch.randn(n, d, generator=g) * 1e3  # no two posteriors overlap
    logvar = torch.full((n, d), -4.0)
    out = rate_decomposition(mu, logvar, batch_size=100, generator=g, dataset_size=N)
    assert abs(out["mutual_information"] - math.log(N)) < 1e-6
    assert abs(out["mutual_information"] + out["marginal_kl"] - out["rate"]) < 1e-9
    with pytest.raises(ValueError):
        rate_decomposition(mu, logvar, batch_size=None, dataset_size=N)
    with pytest.raises(ValueError):
        rate_decomposition(mu, logvar, batch_size=100, dataset_size=n - 1)
