"""Known answers for the Kumar & Poole Appendix C uniqueness experiment (analysis.kp)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.kp import uniqueness
from analysis.kp.orientations import (
    ORIENTATION_COLUMNS,
    orientation_angles,
    orientation_batch,
    orientation_sweep,
)
from analysis.kp.unamortised import (
    UNAMORTISED_PARAMS,
    build_unamortised_batch,
    evaluate_unamortised,
    fit_to_generating_decoder,
    posteriors,
    unamortised_elbo,
    unamortised_means,
)
from analysis.kp.uniqueness import same_data_trials, true_decoder_trials
from analysis.kp.uniqueness_model import (
    decoder_encoder,
    elbo_linear,
    elbo_per_point,
    elbo_quadrature,
    gaussian_loglik,
    generating_W,
    init_trial,
    make_data,
    procrustes_angle,
    random_orthogonal,
    rotation_matrix,
    trial_generator,
)
from analysis.kp.uniqueness_plot import (
    best_per_orientation,
    circular_spread,
    orientation_markdown,
    plot_angles,
    plot_orientations,
    summarise,
    summary_markdown,
)
from analysis.kp.uniqueness_training import (
    UniquenessConfig,
    batch_elbo,
    build_batch,
    encoder_means,
    evaluate_batch,
    set_generating_decoder,
    train_batch,
)
from rdbench.cli import main as rdbench_main
from rdbench.io import MARKER, InputError, output_kind

CPU = torch.device("cpu")
torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared CPU
SIGNED_PERMUTATIONS = [torch.tensor(p, dtype=torch.float64) for p in (
    [[1, 0], [0, 1]], [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[-1, 0], [0, -1]],
    [[0, 1], [1, 0]], [[0, -1], [1, 0]], [[0, 1], [-1, 0]], [[0, -1], [-1, 0]])]


def rotation(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]],
                        dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("theta", [-40.0, -12.5, 0.0, 7.0, 30.0, 44.0])
def test_procrustes_recovers_a_known_rotation(theta: float) -> None:
    z = torch.randn(500, 2, generator=gen(), dtype=torch.float64)
    m = 0.3 * z @ rotation(theta)          # M = 0.3 R(θ)ᵀ Z, so Z = R(θ) M / 0.3
    m = m + 1e-3 * torch.randn(500, 2, generator=gen(1), dtype=torch.float64)
    assert procrustes_angle(z, m).item() == pytest.approx(theta, abs=0.05)


@pytest.mark.parametrize("theta", [-40.0, -12.5, 0.0, 7.0, 30.0])
def test_angle_is_exact_for_an_anisotropically_scaled_rotation(theta: float) -> None:
    """M = S R(θ)ᵀ Z and M = R(θ)ᵀ S Z (S = diag(3, ½), plus an offset) are rotations by θ
    up to axis scaling, whatever the sample's Z Zᵀ: plain Procrustes is off by ~0.8° here."""
    z = torch.randn(4000, 2, generator=gen(), dtype=torch.float64)
    offset = torch.tensor([0.3, -0.2], dtype=torch.float64)
    for S in (torch.diag(torch.tensor([3.0, 0.5], dtype=torch.float64)),
              torch.diag(torch.tensor([0.5, 3.0], dtype=torch.float64))):
        for m in (z @ rotation(theta) @ S, z @ S @ rotation(theta)):
            assert procrustes_angle(z, m + offset).item() == pytest.approx(theta, abs=1e-6)


def test_angle_is_invariant_to_permutation_and_reflection_of_latents() -> None:
    z = torch.randn(300, 2, generator=gen(), dtype=torch.float64)
    for theta in (-31.0, 3.0, 22.0):
        m = z @ rotation(theta)
        angles = [procrustes_angle(z, m @ P.T).item() for P in SIGNED_PERMUTATIONS]
        assert angles == pytest.approx([theta] * 8, abs=1e-6)


def test_angle_is_reduced_into_the_half_open_interval() -> None:
    z = torch.randn(300, 2, generator=gen(), dtype=torch.float64)
    for theta, expected in [(45.0, 45.0), (-45.0, 45.0), (60.0, -30.0), (100.0, 10.0),
                            (-170.0, 10.0), (135.0, 45.0)]:
        angle = procrustes_angle(z, z @ rotation(theta)).item()
        assert angle == pytest.approx(expected, abs=1e-6)
        assert -45.0 < angle <= 45.0 + 1e-9
    batch = torch.randn(50, 100, 2, generator=gen(2), dtype=torch.float64)
    angles = procrustes_angle(batch, torch.randn(50, 100, 2, generator=gen(3),
                                                 dtype=torch.float64))
    assert angles.shape == (50,) and bool(((angles > -45) & (angles <= 45)).all())


def test_data_has_orthogonal_columns_of_norm_two_and_one_and_the_stated_noise() -> None:
    z, x = make_data("identity", 100_000, 0.05, gen(5))
    W = torch.linalg.lstsq(z, x).solution.T                  # x ≈ z Wᵀ
    assert (W.T @ W).numpy() == pytest.approx(np.diag([4.0, 1.0]), abs=0.03)
    assert (x - z @ W.T).std().item() == pytest.approx(0.05, rel=0.02)
    assert torch.cov(z.T).numpy() == pytest.approx(np.eye(2), abs=0.02)
    z_t, x_t = make_data("tanh", 1000, 0.05, gen(6))
    assert bool((x_t.abs() < 1 + 5 * 0.05).all())


def _set_posterior(A: torch.Tensor, b: torch.Tensor, sigma: float,
                   generator: torch.Generator) -> tuple[dict, dict]:
    """Parameters (under random fixed rotations) whose q(z|x) is the exact posterior."""
    params, fixed = init_trial(generator, full=True)
    Sigma = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + A.T @ A / sigma**2)
    C = Sigma @ A.T / sigma**2
    L = torch.linalg.cholesky(fixed["O_S"].T @ Sigma @ fixed["O_S"])
    params.update(A=A @ fixed["O_A"], b=b, C=fixed["O_C"].T @ C,
                  d=fixed["O_C"].T @ (-C @ b), log_diag=torch.diagonal(L).log(), off=L[1, 0])
    return ({k: v[None] for k, v in params.items()}, {k: v[None] for k, v in fixed.items()})


def test_linear_elbo_is_the_log_likelihood_at_the_exact_posterior() -> None:
    sigma = 0.05
    A = torch.tensor([[1.5, -0.4], [0.7, 0.9]], dtype=torch.float64)
    b = torch.tensor([0.2, -0.1], dtype=torch.float64)
    z = torch.randn(2000, 2, generator=gen(7), dtype=torch.float64)
    x = z @ A.T + b + sigma * torch.randn(2000, 2, generator=gen(8), dtype=torch.float64)
    params, fixed = _set_posterior(A, b, sigma, gen(9))
    elbo = elbo_linear(params, fixed, x.mean(0)[None], (x.T @ x / len(x))[None], sigma)
    marginal = torch.distributions.MultivariateNormal(b, A @ A.T + sigma**2 * torch.eye(2))
    assert elbo.item() == pytest.approx(marginal.log_prob(x).mean().item(), abs=1e-9)
    quadrature = elbo_quadrature(params, fixed, x[None], "identity", sigma, nodes=2)
    assert quadrature.item() == pytest.approx(elbo.item(), abs=1e-9)


@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid", "elu"])
def test_quadrature_matches_a_dense_grid_integral(nonlinearity: str) -> None:
    params, fixed = init_trial(gen(10), full=True)
    params = {k: v[None] for k, v in params.items()}
    fixed = {k: v[None] for k, v in fixed.items()}
    params["log_diag"] = torch.tensor([[-1.0, -1.5]], dtype=torch.float64)
    params["off"] = torch.tensor([0.3], dtype=torch.float64)
    _, x = make_data(nonlinearity, 50, 0.05, gen(11))
    quadrature = elbo_quadrature(params, fixed, x[None], nonlinearity, 0.05, nodes=32).item()
    # Independent check: u_j = a_jᵀz ~ N(m, s²) integrated on a dense grid (trapezoid).
    A, C, d, Sigma, logdet = (v[0] for v in decoder_encoder(params, fixed))
    mu = x @ C.T + d
    m, s = mu @ A.T, torch.diagonal(A @ Sigma @ A.T).sqrt()          # (N, 2), (2,)
    e = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    u = m[..., None] + s[:, None] * e                                  # (N, 2, G)
    density = torch.exp(-e**2 / 2) / math.sqrt(2 * math.pi)
    nu = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": torch.nn.functional.elu}
    sq = ((x - params["b"][0])[..., None] - nu[nonlinearity](u)) ** 2
    err = torch.trapezoid(sq * density, e, dim=-1).sum(-1)            # (N,)
    loglik = -err / (2 * 0.05**2) - math.log(2 * math.pi * 0.05**2)
    kl = 0.5 * (torch.trace(Sigma) + mu.square().sum(-1) - 2 - logdet)
    # elu'' jumps at 0, so Gauss–Hermite converges only algebraically there: 1e-6 relative.
    tolerance = {"rel": 1e-6} if nonlinearity == "elu" else {"abs": 1e-6}
    assert quadrature == pytest.approx((loglik - kl).mean().item(), **tolerance)


@pytest.mark.parametrize("nonlinearity", ["identity", "tanh", "sigmoid", "elu"])
def test_fused_quadrature_gradients_match_autograd(nonlinearity: str) -> None:
    """The hand-written backward of the fused kernel equals autograd through plain ops."""
    params, fixed = init_trial(gen(17), full=True)
    params = {k: v[None].clone() for k, v in params.items()}
    params["A"] = params["A"] * 2
    params["log_diag"] = torch.tensor([[-1.0, -1.5]], dtype=torch.float64)
    params["off"] = torch.tensor([0.3], dtype=torch.float64)
    params["b"] = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    params = {k: v.requires_grad_() for k, v in params.items()}
    fixed = {k: v[None] for k, v in fixed.items()}
    _, x = make_data(nonlinearity, 200, 0.05, gen(18))
    fused = elbo_quadrature(params, fixed, x[None], nonlinearity, 0.05, nodes=5)
    grads = torch.autograd.grad(fused.sum(), list(params.values()))
    t, w = np.polynomial.hermite.hermgauss(5)
    tau, w = torch.tensor(math.sqrt(2) * t), torch.tensor(w / math.sqrt(math.pi))
    A, C, d, Sigma, logdet = decoder_encoder(params, fixed)
    mu = x @ C[0].T + d[0]
    s = torch.diagonal(A[0] @ Sigma[0] @ A[0].T).sqrt()
    u = (mu @ A[0].T)[..., None] + s[:, None] * tau
    nu = {"identity": lambda v: v, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
          "elu": torch.nn.functional.elu}[nonlinearity]
    err = (((x - params["b"][0])[..., None] - nu(u)) ** 2 @ w).sum(-1)
    loglik = -err / (2 * 0.05**2) - math.log(2 * math.pi * 0.05**2)
    kl = 0.5 * (torch.trace(Sigma[0]) + mu.square().sum(-1) - 2 - logdet[0])
    plain = (loglik - kl).mean()
    assert fused.item() == pytest.approx(plain.item(), abs=1e-9)
    for g, h in zip(grads, torch.autograd.grad(plain, list(params.values())), strict=True):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-9)


def test_diagonal_trials_have_a_diagonal_posterior_covariance() -> None:
    params, fixed = init_trial(gen(13), full=False)
    params["off"] = torch.tensor(0.7, dtype=torch.float64)
    params["log_diag"] = torch.tensor([0.3, -0.2], dtype=torch.float64)
    *_, Sigma, logdet = decoder_encoder({k: v[None] for k, v in params.items()},
                                        {k: v[None] for k, v in fixed.items()})
    assert Sigma[0].numpy() == pytest.approx(np.diag(np.exp([0.6, -0.4])), abs=1e-12)
    assert logdet.item() == pytest.approx(0.2, abs=1e-12)


def test_vectorised_training_equals_trials_trained_one_at_a_time() -> None:
    config = UniquenessConfig(schedule=((4, 1), (8, 1)), nonlinearities=("tanh",),
                              n_points=100, dtype="float64")
    together = build_batch(config, "tanh", CPU)
    train_batch(together, config, "tanh")
    for n, row in [(4, 0), (8, 2)]:
        alone = build_batch(replace(config, schedule=((n, 1),)), "tanh", CPU)
        train_batch(alone, replace(config, schedule=((n, 1),)), "tanh")
        for k, v in alone.params.items():
            torch.testing.assert_close(together.params[k][row], v[0])


def test_training_improves_the_elbo_of_a_tiny_model() -> None:
    config = UniquenessConfig(schedule=((40, 2),), nonlinearities=("sigmoid",),
                              n_points=300)
    batch = build_batch(config, "sigmoid", CPU)
    with torch.no_grad():
        before = batch_elbo(batch, config, "sigmoid")
    train_batch(batch, config, "sigmoid")
    with torch.no_grad():
        after = batch_elbo(batch, config, "sigmoid")
    assert bool((after > before + 1.0).all())


def _optimal_encoder(A: torch.Tensor, b: torch.Tensor, sigma: float, full: bool,
                     generator: torch.Generator) -> tuple[dict, dict]:
    """Best q(z|x) for a linear decoder: exact posterior mean; Σ the exact posterior
    covariance (full) or Σ_kk = 1 / (1 + (AᵀA)_kk / σ²) (diagonal), both in closed form."""
    params, fixed = _set_posterior(A, b, sigma, generator)
    if not full:
        fixed["O_S"], fixed["full"] = torch.eye(2, dtype=torch.float64)[None], fixed["full"] * 0
        params["log_diag"] = -0.5 * torch.log1p(torch.diagonal(A.T @ A) / sigma**2)[None]
    return params, fixed


def test_only_the_diagonal_elbo_prefers_the_true_axes() -> None:
    """Rotating the latents of the PPCA optimum by δ leaves the full-Σ ELBO unchanged and
    lowers the diagonal-Σ ELBO (by ½ Σ log(1 + (AᵀA)_kk/σ²) − ½ log det(I + AᵀA/σ²))."""
    sigma = 0.05
    z = torch.randn(4000, 2, generator=gen(14), dtype=torch.float64)
    W = rotation(25.0) * torch.tensor([2.0, 1.0], dtype=torch.float64)
    x = z @ W.T + sigma * torch.randn(4000, 2, generator=gen(15), dtype=torch.float64)
    mean, second = x.mean(0)[None], (x.T @ x / len(x))[None]
    xc = x - x.mean(0)
    lam, U = torch.linalg.eigh(xc.T @ xc / len(x))
    A0 = U * (lam - sigma**2).sqrt()                           # PPCA optimum, orthogonal columns
    elbos = {}
    for full in (False, True):
        for delta in (0.0, 5.0, 20.0, 45.0):
            params, fixed = _optimal_encoder(A0 @ rotation(delta), x.mean(0), sigma, full,
                                             gen(16))
            elbos[full, delta] = elbo_linear(params, fixed, mean, second, sigma).item()
    assert [elbos[True, d] for d in (5.0, 20.0, 45.0)] == pytest.approx([elbos[True, 0.0]] * 3,
                                                                        abs=1e-9)
    assert elbos[False, 0.0] == pytest.approx(elbos[True, 0.0], abs=1e-9)
    assert elbos[False, 0.0] > elbos[False, 5.0] > elbos[False, 20.0] > elbos[False, 45.0]
    AtA = (A0 @ rotation(20.0)).T @ (A0 @ rotation(20.0)) / sigma**2
    gap = 0.5 * (torch.log1p(torch.diagonal(AtA)).sum() - torch.logdet(torch.eye(2) + AtA))
    assert elbos[True, 0.0] - elbos[False, 20.0] == pytest.approx(gap.item(), rel=1e-6)


def test_summary_takes_the_highest_elbo_quarter() -> None:
    trials = pd.DataFrame({"nonlinearity": "tanh", "covariance": "diagonal",
                           "iterations": [10, 10, 10, 10, 10, 20, 20, 20], "trial": range(8),
                           "elbo": [1, 2, 3, 4, 5, 6, 7, 8],
                           "angle_deg": [40, -30, 20, 10, 5, -4, 2, -1]})
    row = summarise(trials).iloc[0]
    assert row["median_abs_angle_top_quarter"] == pytest.approx(1.5)
    assert row["median_abs_angle_all"] == pytest.approx(7.5)
    assert row["median_abs_angle_longest"] == pytest.approx(2.0)
    assert (row["longest_iterations"], row["longest_trials"]) == (20, 3)
    assert row["trials"] == 8
    text = summary_markdown(summarise(trials), UniquenessConfig(), 1.0, "cpu")
    assert "| tanh | diagonal | 8 | 8.0000 | 1.50° | 7.50° | 2.00° (3 × 20 steps) |" in text


def test_a_diverged_trial_is_reported_as_nan_and_left_out(tmp_path) -> None:
    """Plain GD at σ = 0.05 diverges (README): a trial with non-finite parameters gets NaN
    rows and a count, the others evaluate exactly as before, and nothing raises."""
    config = UniquenessConfig(schedule=((5, 4),), nonlinearities=("tanh",), n_points=50)
    batch = build_batch(config, "tanh", CPU)
    train_batch(batch, config, "tanh")
    clean = evaluate_batch(batch, config, "tanh")
    batch.params["A"].data[1, 0, 0] = math.inf
    table = evaluate_batch(batch, config, "tanh")
    values = ["elbo", "angle_deg", "decoder_sv_min", "decoder_sigma"]
    assert table.loc[1, values].isna().all()
    others = table.index != 1
    pd.testing.assert_frame_equal(table[others], clean[others])
    row = summarise(table).set_index("covariance").loc[table.loc[1, "covariance"]]
    assert row["diverged"] == 1 and row["trials"] == 4
    assert row["elbo_max"] == clean[others & (clean["covariance"] == row.name)]["elbo"].max()
    text = summary_markdown(summarise(table), config, 1.0, "cpu")
    assert f"tanh {row.name} 1/4" in text
    everything = table.assign(elbo=math.nan)
    assert "| all diverged |" in summary_markdown(summarise(everything), config, 1.0, "cpu")
    assert len(plot_angles(everything, tmp_path / "nan")) == 2


def test_figure_is_written_as_png_and_pdf(tmp_path) -> None:
    rng = np.random.default_rng(0)
    trials = pd.DataFrame({"nonlinearity": np.repeat(["identity", "tanh"], 20),
                           "covariance": np.tile(np.repeat(["diagonal", "full"], 10), 2),
                           "iterations": 10, "trial": np.tile(range(10), 4),
                           "elbo": rng.normal(-3, 1, 40), "angle_deg": rng.uniform(-45, 45, 40)})
    paths = plot_angles(trials, tmp_path / "fig")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_rejects_bad_input_before_work(tmp_path, capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for argv in (["--out", str(tmp_path / "full")],
                 ["--out", str(tmp_path / "full"), "--force"],  # not an rdbench output
                 ["--out", str(tmp_path / "new"), "--seed", "-1"],
                 ["--out", str(tmp_path / "new"), "--device", "tpu"],
                 ["--out", str(tmp_path / "new"), "--nonlinearities", "relu"]):
        assert rdbench_main(["kp", "uniqueness", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rdbench: error:") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_same_data_trials_share_the_data_but_not_the_initialisation() -> None:
    config = UniquenessConfig(n_points=200, dtype="float64")
    table = same_data_trials("identity", 0, 3, config=config)
    assert list(table["covariance"]) == ["diagonal"] * 3 + ["full"] * 3
    # untrained (n = 0): the angle is the initial encoder's, different for each init
    assert table["angle_deg"].iloc[:3].nunique() == 3
    assert table["elbo"].iloc[:3].nunique() == 3
    trained = same_data_trials("identity", 200, 2, config=config)
    assert bool((trained["elbo"] > table["elbo"].max()).all())


def test_true_decoder_trials_keep_the_generating_decoder_and_fit_the_encoder() -> None:
    """ν = identity, W with orthogonal columns: the exact posterior is in both families, so
    with A = W, b = 0 fixed and the encoder fitted, the ELBO is log N(x; 0, WWᵀ + σ²I)."""
    # n = 2000: Adam's second-moment memory (β₂ = 0.999) keeps log Σ from converging in
    # the few hundred steps that are enough for C (its gradient falls by ~10³ on the way).
    config = UniquenessConfig(schedule=((2000, 1),), nonlinearities=("identity",),
                              n_points=500, dtype="float64")
    table = true_decoder_trials(config, "identity")
    batch = build_batch(config, "identity", CPU)                   # the same data and init
    W = random_orthogonal(trial_generator(0, "identity", 2000, 0))   # as make_data draws it
    W = W * torch.tensor([2.0, 1.0], dtype=torch.float64)
    cov = W @ W.T + 0.05**2 * torch.eye(2, dtype=torch.float64)
    marginal = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov)
    expected = marginal.log_prob(batch.x[0]).mean().item()
    assert list(table["covariance"]) == ["diagonal", "full"]
    assert table["elbo"].to_numpy() == pytest.approx([expected, expected], abs=1e-4)
    assert table["angle_deg"].abs().max() < 0.5


def test_learned_decoder_std_is_the_elbo_maximising_sigma() -> None:
    """−err/(2σ²) − log(2πσ²) is largest at σ² = err/2, where it is −1 − log(π err)."""
    err = torch.tensor([0.005, 0.3, 7.0], dtype=torch.float64)
    learned = gaussian_loglik(err, None)
    for i, e in enumerate(err.tolist()):
        best = math.sqrt(e / 2)
        assert learned[i].item() == pytest.approx(gaussian_loglik(err[i], best).item(), abs=1e-12)
        assert learned[i].item() == pytest.approx(-1 - math.log(math.pi * e), abs=1e-12)
        for sigma in (0.9 * best, 1.1 * best, 0.5):
            assert gaussian_loglik(err[i], sigma).item() < learned[i].item()


def test_learned_decoder_std_reaches_the_gaussian_maximum_likelihood() -> None:
    """ν = identity with σ learned: the model N(b, AAᵀ + σ²I) can be any Gaussian, and the
    exact posterior is Gaussian, so training reaches the ELBO of the Gaussian fit by maximum
    likelihood, log N(x; x̄, S) averaged over the data — for full Σ and, since mean-field
    loses nothing once A's columns are orthogonal, for diagonal Σ too. (That maximum is a
    ridge: AAᵀ = S − σ²I fits for every σ² ≤ λ_min(S), so σ itself is not identified.)"""
    config = UniquenessConfig(schedule=((2000, 1),), nonlinearities=("identity",),
                              n_points=500, dtype="float64", decoder_std="learned")
    batch = build_batch(config, "identity", CPU)
    x = batch.x[0]
    xc = x - x.mean(0)
    fit = torch.distributions.MultivariateNormal(x.mean(0), xc.T @ xc / len(x))
    expected = fit.log_prob(x).mean().item()
    train_batch(batch, config, "identity")
    with torch.no_grad():
        elbo = batch_elbo(batch, config, "identity")
    assert elbo.tolist() == pytest.approx([expected, expected], abs=1e-3)
    fixed = batch_elbo(batch, replace(config, decoder_std=0.05), "identity")
    assert bool((fixed < elbo).all())        # the same model with σ fixed is worse


def test_gd_steps_by_the_learning_rate_times_the_gradient() -> None:
    """optimizer "gd": one step moves every parameter by exactly −lr · ∂(−ELBO)/∂θ."""
    config = UniquenessConfig(schedule=((1, 1),), nonlinearities=("tanh",), n_points=50,
                              dtype="float64", decoder_std="learned", optimizer="gd",
                              decays=1)
    batch = build_batch(config, "tanh", CPU)
    before = {k: v.detach().clone() for k, v in batch.params.items()}
    grads = torch.autograd.grad(-batch_elbo(batch, config, "tanh").sum(),
                                list(batch.params.values()))
    train_batch(batch, config, "tanh")
    for (k, v), g in zip(batch.params.items(), grads, strict=True):
        torch.testing.assert_close(v.detach(), before[k] - config.learning_rate * g)
    with pytest.raises(InputError, match="optimizer"):
        UniquenessConfig(optimizer="sgd")


# ----------------------------------------------------------------------------- orientation


def test_make_data_with_a_given_rotation_draws_only_z_and_noise() -> None:
    """Without Q the generator draws Q first (the experiment's stream, unchanged); with Q it
    draws z and ε only, so one generator state gives the same z and ε for every Q."""
    g = gen(21)
    W = random_orthogonal(g) * torch.tensor([2.0, 1.0], dtype=torch.float64)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    eps = 0.05 * torch.randn(50, 2, generator=g, dtype=torch.float64)
    z_default, x_default = make_data("tanh", 50, 0.05, gen(21))
    torch.testing.assert_close(z_default, z)
    torch.testing.assert_close(x_default, torch.tanh(z @ W.T) + eps)
    Q = rotation_matrix(math.radians(30.0))
    z_q, x_q = make_data("identity", 50, 0.05, gen(22), Q)
    z_i, x_i = make_data("identity", 50, 0.05, gen(22), torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(z_q, z_i)
    D = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(x_q - z_q @ (Q @ D).T, x_i - z_i @ D.T)   # the same ε


def test_orientation_batch_is_paired_across_orientations() -> None:
    config = UniquenessConfig(schedule=((7, 2),), n_points=5000, dtype="float64")
    batch = orientation_batch(config, "identity", [0.0, 37.5], CPU)
    assert [(r["q_angle_deg"], r["init"]) for r in batch.rows] == [
        (0.0, 0), (0.0, 1), (37.5, 0), (37.5, 1)]
    assert bool((batch.n == 7).all()) and bool((batch.fixed["full"] == 0).all())
    torch.testing.assert_close(batch.z[0], batch.z[3])                  # same z at every α
    for k in ("A", "C"):                                                # same init k at every α
        torch.testing.assert_close(batch.params[k][0], batch.params[k][2])
        assert not torch.equal(batch.params[k][0], batch.params[k][1])
    W = torch.linalg.lstsq(batch.z[2], batch.x[2]).solution.T          # x ≈ z Wᵀ
    expected = rotation_matrix(math.radians(37.5)) * torch.tensor([2.0, 1.0],
                                                                   dtype=torch.float64)
    assert W.numpy() == pytest.approx(expected.numpy(), abs=5e-3)


def test_orientation_angles_cover_a_quarter_turn_and_reject_bad_steps() -> None:
    assert orientation_angles(7.5) == [7.5 * k for k in range(12)]
    assert orientation_angles(90) == [0.0] and orientation_angles(40) == [0, 40, 80]
    for step in (0.0, -5.0, 91.0, math.nan, math.inf):
        with pytest.raises(InputError, match="STEP"):
            orientation_angles(step)
    with pytest.raises(InputError, match="one \\(n, inits\\)"):
        orientation_sweep(UniquenessConfig(schedule=((3, 1), (4, 1))), [0.0])
    with pytest.raises(InputError, match="finite"):
        orientation_sweep(UniquenessConfig(schedule=((3, 1),)), [math.nan])


def test_diagonal_optimum_finds_the_sample_principal_axes_of_linear_data() -> None:
    """ν = identity (PPCA), W = R(α) diag(2, 1): the mean-field optimum with decoder noise σ
    is A = E (Λ − σ²)^½ (E, Λ the eigenvectors and eigenvalues of the sample covariance),
    whose posterior means are m = diag(√(λ − σ²)/λ) Eᵀ(x − x̄). The best of a few inits must
    match that closed form's angle at every α; for 1,000 points it is the true axes up to
    the sample's tilt (a few degrees, depending on the seed). Rotation is the slowest mode
    under Adam; the long lr 0.1 phase converges it in 8,000 steps."""
    angles, inits = [0.0, 30.0, 67.5], 3
    config = UniquenessConfig(schedule=((4000, inits),), nonlinearities=("identity",),
                              n_points=1000, dtype="float64", decays=2)
    best = best_per_orientation(orientation_sweep(config, angles))
    batch = orientation_batch(config, "identity", angles, CPU)
    for i in range(len(angles)):
        z, x = batch.z[i * inits], batch.x[i * inits]
        xc = x - x.mean(0)
        lam, E = torch.linalg.eigh(xc.T @ xc / len(xc))
        expected = procrustes_angle(z, xc @ E * ((lam - config.noise_std**2).sqrt() / lam))
        assert best["angle_deg"][i] == pytest.approx(float(expected), abs=0.7), angles[i]


def test_saturating_diagonal_optimum_is_true_only_where_symmetry_forces_it() -> None:
    """ν = tanh. At α = 45° swapping x₁ ↔ x₂ maps W's columns to ± themselves, so a unique
    optimum has angle 0 (or 45°): it is recovered, up to the finite sample. At α = 15° no
    symmetry applies and the unique optimum (both inits agree) is rotated by ~25°. (At
    α = 0 the reflection x₁ ↦ −x₁ makes the true axes only a stationary point: the ELBO is
    higher off-axis there, at ≈ ±13°, on a very flat ridge — see the README.)"""
    config = UniquenessConfig(schedule=((3000, 2),), nonlinearities=("tanh",),
                              n_points=1000, decays=2)
    table = orientation_sweep(config, [15.0, 45.0])
    best = best_per_orientation(table).set_index("q_angle_deg")
    assert bool((best["init_spread_deg"] < 0.5).all())
    assert abs(best.at[45.0, "angle_deg"]) < 2.0
    assert best.at[15.0, "angle_deg"] > 15.0


def test_init_spread_wraps_around_the_quarter_turn() -> None:
    assert circular_spread(np.array([44.9, -44.9])) == pytest.approx(0.2)  # one solution
    assert circular_spread(np.array([0.0, 10.0, 20.0])) == pytest.approx(20.0)
    assert circular_spread(np.array([-40.0, 40.0])) == pytest.approx(10.0)
    assert circular_spread(np.array([5.0])) == 0.0


def test_orientation_tables_and_figure(tmp_path) -> None:
    table = pd.DataFrame({"nonlinearity": np.repeat(["tanh", "identity"], 4),
                          "q_angle_deg": np.tile([0.0, 0.0, 45.0, 45.0], 2),
                          "init": np.tile([0, 1], 4),
                          "elbo": [-1.0, -2.0, -3.0, -1.5, -5, -5, -5, -4],
                          "angle_deg": [3.0, -20.0, 10.0, 12.5, 0.1, 0.2, 0.3, 0.4]})
    best = best_per_orientation(table)
    assert list(best["nonlinearity"]) == ["identity", "identity", "tanh", "tanh"]
    assert list(best["angle_deg"]) == [0.1, 0.4, 3.0, 12.5]
    assert list(best["init_spread_deg"]) == pytest.approx([0.1, 0.1, 23.0, 2.5])
    text = orientation_markdown(table, UniquenessConfig(schedule=((300, 2),)), 12.0, "cpu")
    assert "| 45° | 0.40° (0.10°) | 12.50° (2.50°) |" in text
    paths = plot_orientations(table, tmp_path / "fig")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def _orientation_args(out, **kwargs) -> argparse.Namespace:
    defaults = {"out": str(out), "quick": True, "seed": 0, "device": "cpu", "force": False,
                "orientations": 45.0}
    return argparse.Namespace(**{**defaults, **kwargs})


def test_orientation_main_validates_then_writes_its_files(tmp_path, monkeypatch) -> None:
    for bad in ({"orientations": 0.0}, {"orientations": 120.0}, {"seed": -1},
                {"device": "tpu"}, {"decoder_std": [0.0]}, {"decoder_std": [math.inf]},
                {"decoder_std": ["fitted"]}, {"max_trials": 0}, {"max_trials": 3}):
        with pytest.raises(InputError):
            uniqueness.main(_orientation_args(tmp_path / "bad", **bad))
    assert not (tmp_path / "bad").exists()
    monkeypatch.setattr(uniqueness, "ORIENTATION_QUICK", (3, 2))
    monkeypatch.setattr(uniqueness, "make_config", lambda quick, seed: UniquenessConfig(
        nonlinearities=("identity", "tanh"), n_points=100, seed=seed))
    assert uniqueness.main(_orientation_args(tmp_path / "run")) == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"orientations.csv", "orientations.md", "config.json",
                     "angle_vs_orientation.png", "angle_vs_orientation.pdf", MARKER}
    assert output_kind(tmp_path / "run") == "kp-uniqueness"
    table = pd.read_csv(tmp_path / "run" / "orientations.csv")
    assert tuple(table.columns) == ORIENTATION_COLUMNS and len(table) == 2 * 2 * 2
    assert sorted(set(table["q_angle_deg"])) == [0.0, 45.0]


# ----------------------------------------------------------------------------- unamortised


def _per_point_posteriors(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random μ_i (1, n, 2), full Σ_i (1, n, 2, 2) and log det Σ_i (1, n), float64."""
    mu = torch.randn(1, n, 2, generator=generator, dtype=torch.float64)
    B = 0.2 * torch.randn(1, n, 2, 2, generator=generator, dtype=torch.float64)
    Sigma = B @ B.mT + 0.05 * torch.eye(2, dtype=torch.float64)
    return mu, Sigma, torch.logdet(Sigma)


@pytest.mark.parametrize("nonlinearity", ["identity", "tanh", "sigmoid", "elu"])
def test_per_point_elbo_equals_the_amortised_elbo_for_shared_posteriors(
        nonlinearity: str) -> None:
    """μ_i = C x_i + d and Σ_i = Σ for every i is the amortised posterior: same ELBO."""
    params, fixed = init_trial(gen(30), full=True)
    params = {k: v[None] for k, v in params.items()}
    params.update(log_diag=torch.tensor([[-1.0, -1.5]], dtype=torch.float64),
                  off=torch.tensor([0.3], dtype=torch.float64),
                  b=torch.tensor([[0.1, -0.2]], dtype=torch.float64))
    fixed = {k: v[None] for k, v in fixed.items()}
    _, x = make_data(nonlinearity, 300, 0.05, gen(31))
    A, C, d, Sigma, logdet = decoder_encoder(params, fixed)
    mu = x[None] @ C.mT + d[:, None]
    per_point = elbo_per_point(A, params["b"], mu, Sigma[:, None].expand(1, 300, 2, 2),
                               logdet[:, None].expand(1, 300), x[None], nonlinearity, 0.05, 8)
    amortised = elbo_quadrature(params, fixed, x[None], nonlinearity, 0.05, nodes=8)
    assert per_point.item() == pytest.approx(amortised.item(), abs=1e-9)


@pytest.mark.parametrize("nonlinearity", ["identity", "tanh", "sigmoid", "elu"])
def test_per_point_elbo_equals_brute_force_integration(nonlinearity: str) -> None:
    """Independent check: E_q log p(x_i|z) on a 2-D Gauss–Hermite product grid in z (no
    1-D projection), KL from torch.distributions; 4 points with their own μ_i, Σ_i."""
    mu, Sigma, logdet = _per_point_posteriors(4, gen(32))
    A = torch.tensor([[[1.2, -0.7], [0.4, 0.9]]], dtype=torch.float64)
    b = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    nu = {"identity": lambda u: u, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
          "elu": torch.nn.functional.elu}[nonlinearity]
    x = nu(mu @ A.mT) + b[:, None] + 0.05 * torch.randn(1, 4, 2, generator=gen(33),
                                                        dtype=torch.float64)
    elbo = elbo_per_point(A, b, mu, Sigma, logdet, x, nonlinearity, 0.05, 64).item()
    t, w = np.polynomial.hermite.hermgauss(80)
    t, w = torch.tensor(math.sqrt(2) * t), torch.tensor(w / math.sqrt(math.pi))
    eps = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)   # (G, 2)
    weight = (w[:, None] * w[None, :]).reshape(-1)                           # (G,)
    z = mu[0, :, None] + eps @ torch.linalg.cholesky(Sigma[0]).mT            # (4, G, 2)
    likelihood = torch.distributions.Normal(nu(z @ A[0].T) + b[0], 0.05)
    loglik = likelihood.log_prob(x[0, :, None]).sum(-1) @ weight             # (4,)
    q = torch.distributions.MultivariateNormal(mu[0], Sigma[0])
    prior = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                   torch.eye(2, dtype=torch.float64))
    expected = (loglik - torch.distributions.kl_divergence(q, prior)).mean().item()
    # elu'' jumps at 0, so both rules converge only algebraically there (~1e-5 relative).
    tolerance = {"rel": 1e-4} if nonlinearity == "elu" else {"abs": 1e-8}
    assert elbo == pytest.approx(expected, **tolerance)


def test_per_point_quadrature_gradients_are_exact() -> None:
    """The fused kernel's backward with one s per point passes torch's gradcheck."""
    mu, Sigma, logdet = _per_point_posteriors(3, gen(34))
    A = torch.tensor([[[1.2, -0.7], [0.4, 0.9]]], dtype=torch.float64)
    b = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    x = torch.randn(1, 3, 2, generator=gen(35), dtype=torch.float64)
    for nonlinearity in ("tanh", "sigmoid", "elu"):
        def elbo(A, b, mu, Sigma, nonlinearity=nonlinearity):  # noqa: ANN001, ANN202
            return elbo_per_point(A, b, mu, Sigma, logdet, x, nonlinearity, 0.05, 5)
        inputs = tuple(v.clone().requires_grad_() for v in (A, b, mu, Sigma))
        assert torch.autograd.gradcheck(elbo, inputs)


def test_unamortised_parameterisation() -> None:
    """Diagonal trials have diagonal Σ_i, full ones O_S L_i L_iᵀ O_Sᵀ; every trial starts
    from its amortised twin's decoder and initial posterior means C x_i + d."""
    config = UniquenessConfig(schedule=((3, 1),), n_points=50, dtype="float64")
    amortised = build_batch(config, "tanh", CPU)
    batch = build_unamortised_batch(config, "tanh", CPU)
    assert batch.rows == amortised.rows and tuple(batch.params) == UNAMORTISED_PARAMS
    torch.testing.assert_close(batch.x, amortised.x)
    torch.testing.assert_close(batch.params["A"], amortised.params["A"])
    torch.testing.assert_close(unamortised_means(batch), encoder_means(amortised))
    with torch.no_grad():
        batch.params["log_diag"].copy_(torch.randn(2, 2, 50, generator=gen(36)))
        batch.params["off"].copy_(torch.randn(2, 50, generator=gen(37)))
    _, _, _, Sigma, logdet = posteriors(batch.params, batch.fixed)
    l1, l2 = batch.params["log_diag"].detach().exp().unbind(1)
    torch.testing.assert_close(Sigma[0], torch.diag_embed(torch.stack([l1[0], l2[0]], -1) ** 2))
    L = torch.stack([torch.stack([l1[1], torch.zeros(50, dtype=torch.float64)], -1),
                     torch.stack([batch.params["off"].detach()[1], l2[1]], -1)], -2)
    O = batch.fixed["O_S"][1]
    torch.testing.assert_close(Sigma[1], O @ L @ L.mT @ O.T)
    torch.testing.assert_close(logdet, torch.logdet(Sigma))
    assert not torch.allclose(O, torch.eye(2, dtype=torch.float64))


def test_unamortised_vi_reaches_the_exact_ppca_posterior() -> None:
    """ν = identity, decoder frozen at the generating (A, b) = (W, 0): the best q_i is the
    exact posterior N(Σ* Wᵀ x_i / σ², Σ*), Σ* = (I + WᵀW/σ²)⁻¹ — diagonal too, as W has
    orthogonal columns — and the ELBO is log N(x; 0, WWᵀ + σ²I)."""
    # n = 2000, as for the amortised encoder: Adam's second-moment memory keeps log Σ_i
    # (which starts at 0, far above log Σ* ≈ −7) slow once its gradient has fallen.
    config = UniquenessConfig(schedule=((2000, 1),), nonlinearities=("identity",),
                              n_points=100, dtype="float64")
    batch = fit_to_generating_decoder(config, "identity")
    W = generating_W(trial_generator(0, "identity", 2000, 0))
    sigma2 = 0.05**2
    Sigma = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / sigma2)
    x = batch.x[0]
    _, _, mu, Sigmas, _ = posteriors(batch.params, batch.fixed)
    for t in range(2):                                                 # diagonal, full
        torch.testing.assert_close(mu[t], x @ (Sigma @ W.T / sigma2).T, rtol=0, atol=1e-9)
        torch.testing.assert_close(Sigmas[t], Sigma.expand(100, 2, 2), rtol=0, atol=1e-6)
    marginal = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64), W @ W.T + sigma2 * torch.eye(2))
    table = evaluate_unamortised(batch, config, "identity")
    assert table["elbo"].to_numpy() == pytest.approx(
        [marginal.log_prob(x).mean().item()] * 2, abs=1e-6)
    assert table["angle_deg"].abs().max() < 0.5


def test_unamortised_training_improves_the_elbo() -> None:
    config = UniquenessConfig(schedule=((40, 1),), nonlinearities=("sigmoid",), n_points=300)
    batch = build_unamortised_batch(config, "sigmoid", CPU)
    with torch.no_grad():
        before = unamortised_elbo(batch, config, "sigmoid")
    train_batch(batch, config, "sigmoid", elbo=unamortised_elbo)
    with torch.no_grad():
        after = unamortised_elbo(batch, config, "sigmoid")
    assert bool((after > before + 1.0).all())


def test_cli_rejects_unamortised_with_orientations(tmp_path, capsys) -> None:
    argv = ["kp", "uniqueness", "--out", str(tmp_path / "new"), "--unamortised",
            "--orientations"]
    assert rdbench_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdbench: error:") and err.count("\n") == 1
    assert "--unamortised" in err and "--orientations" in err
    assert not (tmp_path / "new").exists()


def test_unamortised_main_writes_the_same_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(uniqueness, "make_config", lambda quick, seed: UniquenessConfig(
        schedule=((3, 1), (4, 1)), nonlinearities=("identity", "elu"), n_points=100,
        seed=seed))
    args = _orientation_args(tmp_path / "run", orientations=None, unamortised=True)
    assert uniqueness.main(args) == 0
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"trials.csv", "summary.csv", "summary.md", "config.json",
                     "angle_vs_elbo.png", "angle_vs_elbo.pdf", MARKER}
    table = pd.read_csv(tmp_path / "run" / "trials.csv")
    assert tuple(table.columns) == uniqueness.TRIAL_COLUMNS and len(table) == 2 * 2 * 2
    assert "unamortised" in (tmp_path / "run" / "summary.md").read_text()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["inference"] == "unamortised"


def test_several_decoder_stds_run_once_each_and_are_compared(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(uniqueness, "make_config", lambda quick, seed: UniquenessConfig(
        schedule=((3, 1), (4, 1)), nonlinearities=("identity", "tanh"), n_points=100,
        seed=seed))
    for bad in ({"decoder_std": [0.05, -2.0]}, {"decoder_std": [0.05, 0.1], "orientations": 45.0}):
        with pytest.raises(InputError):
            uniqueness.main(_orientation_args(tmp_path / "bad", **{"orientations": None, **bad}))
    assert not (tmp_path / "bad").exists()
    args = _orientation_args(tmp_path / "run", orientations=None,
                             decoder_std=["learned", 0.3, 0.05, 0.3])
    assert uniqueness.main(args) == 0
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "decoder-std-0.05", "decoder-std-0.3", "decoder-std-learned", "decoder_std.csv",
        "decoder_std.md", "angle_vs_decoder_std.png", "angle_vs_decoder_std.pdf", MARKER}
    for sigma in ("0.05", "0.3", "learned"):
        config = json.loads((run / f"decoder-std-{sigma}" / "config.json").read_text())
        assert str(config["decoder_std"]) == sigma
        trials = pd.read_csv(run / f"decoder-std-{sigma}" / "trials.csv")
        assert len(trials) == 2 * 2 * 2                           # ν × n × Σ
    table = pd.read_csv(run / "decoder_std.csv", dtype={"decoder_std": str})
    assert list(dict.fromkeys(table["decoder_std"])) == ["0.05", "0.3", "learned"]
    assert "σ = learned" in (run / "decoder_std.md").read_text()
    monkeypatch.setattr(uniqueness, "make_config", lambda quick, seed: UniquenessConfig(
        schedule=((3, 3), (4, 2)), nonlinearities=("identity", "tanh"), n_points=100))
    capped = _orientation_args(tmp_path / "capped", orientations=None, max_trials=1)
    assert uniqueness.main(capped) == 0
    assert len(pd.read_csv(tmp_path / "capped" / "trials.csv")) == 2 * 2 * 2  # 1 per n
    assert json.loads((tmp_path / "capped" / "config.json").read_text())["schedule"] == [
        [3, 1], [4, 1]]
    # the same σ alone gives the same trials as inside the comparison
    monkeypatch.setattr(uniqueness, "make_config", lambda quick, seed: UniquenessConfig(
        schedule=((3, 1), (4, 1)), nonlinearities=("identity", "tanh"), n_points=100))
    alone = _orientation_args(tmp_path / "alone", orientations=None, decoder_std=[0.3])
    assert uniqueness.main(alone) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "alone" / "trials.csv"),
                                  pd.read_csv(run / "decoder-std-0.3" / "trials.csv"))


def test_decoder_sv_min_flags_a_collapsed_latent() -> None:
    """The generating decoder A = W = Q diag(2, 1) has singular values 2 and 1; a rank-one A
    has 0, and the summary counts such trials as collapsed."""
    config = UniquenessConfig(schedule=((1, 2),), nonlinearities=("tanh",), n_points=50,
                              dtype="float64")
    batch = build_batch(config, "tanh", CPU)
    set_generating_decoder(batch, config, "tanh")
    table = evaluate_batch(batch, config, "tanh")
    assert table["decoder_sv_min"].to_numpy() == pytest.approx([1.0] * 4)
    with torch.no_grad():
        batch.params["A"][:2, :, 1] = 0.0        # trial 0, both Σ: the second latent unused
    table = evaluate_batch(batch, config, "tanh")
    assert table["decoder_sv_min"].to_numpy() == pytest.approx([0, 0, 1, 1], abs=1e-12)
    summary = summarise(table.assign(iterations=5))
    assert summary["collapsed"].tolist() == [1, 1]


def test_the_reported_learned_sigma_is_the_one_that_gives_the_learned_elbo() -> None:
    """decoder_sigma of a learned-σ trial is the σ at which the fixed-σ ELBO equals (and so,
    being the maximiser, reaches) the learned ELBO; a fixed σ is reported as given."""
    config = UniquenessConfig(schedule=((1, 1),), nonlinearities=("tanh",), n_points=60,
                              dtype="float64", decoder_std="learned")
    batch = build_batch(config, "tanh", CPU)
    learned = evaluate_batch(batch, config, "tanh")
    for row in learned.itertuples():
        at_sigma = evaluate_batch(batch, replace(config, decoder_std=row.decoder_sigma), "tanh")
        assert at_sigma.at[row.Index, "elbo"] == pytest.approx(row.elbo, abs=1e-9)
        for other in (0.9 * row.decoder_sigma, 1.1 * row.decoder_sigma):
            fixed = evaluate_batch(batch, replace(config, decoder_std=other), "tanh")
            assert fixed.at[row.Index, "elbo"] < row.elbo
    fixed = evaluate_batch(batch, replace(config, decoder_std=0.05), "tanh")
    assert fixed["decoder_sigma"].tolist() == [0.05, 0.05]
