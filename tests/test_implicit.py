"""Kumar & Poole objectives (benchmark/implicit.py) against brute-force computations.

Tiny float64 models (d = 3 latents, D = 5 "pixels", smooth tanh decoder so that the decoder
Jacobian depends on the parameters) make full Jacobians via torch.autograd.functional cheap.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.distributions import MultivariateNormal, kl_divergence
from torch.func import functional_call, stack_module_state, vmap

from benchmark import implicit
from benchmark.likelihoods import Bernoulli
from benchmark.objectives import beta_vae, get_objective
from rdbench.io import InputError

D_LAT, D_OBS, BATCH = 3, 5, 4


class Tiny(nn.Module):
    """encode: x (B, 5) → (μ (B, 3), params (B, P)); decode: z (B, 3) → logits (B, 5)."""

    def __init__(self, n_params: int = 0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(D_OBS, D_LAT + n_params)
        self.dec = nn.Sequential(nn.Linear(D_LAT, 7), nn.Tanh(), nn.Linear(7, D_OBS))
        self.likelihood = Bernoulli()
        self.double()

    def encode(self, x):
        out = self.enc(x)
        return out[:, :D_LAT], out[:, D_LAT:]

    def decode(self, z):
        return self.dec(z)


def _data(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(BATCH, D_OBS, dtype=torch.float64, generator=g)


def _noise(seed: int = 2, u: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"eps": torch.randn(BATCH, D_LAT, dtype=torch.float64, generator=g),
            "u": torch.rand(BATCH, dtype=torch.float64, generator=g) if u is None else u}


def _brute_gauss_newton(model: Tiny, h: torch.Tensor) -> torch.Tensor:
    """A = JᵀHJ per example from a full reverse-mode Jacobian, H = diag(p(1−p)). (B, d, d)"""
    mats = []
    for hi in h:
        J = jacobian(lambda z: model.decode(z[None])[0], hi, create_graph=True)  # (D, d)
        p = torch.sigmoid(model.decode(hi[None])[0])
        mats.append(J.T @ torch.diag(p * (1 - p)) @ J)
    return torch.stack(mats)


def _brute_grae(model: Tiny, x: torch.Tensor, beta: float) -> torch.Tensor:
    h = model.encode(x)[0]
    A = _brute_gauss_newton(model, h)
    bce = nn.functional.binary_cross_entropy_with_logits(model.decode(h), x, reduction="none")
    logdet = torch.logdet(torch.eye(D_LAT, dtype=x.dtype) + A / beta)
    return bce.sum(1) + beta / 2 * (h.square().sum(1) + logdet)


@pytest.mark.parametrize("beta", [0.05, 1.0, 4.0])
def test_grae_log_det_and_loss_match_full_jacobian(beta):
    model, x = Tiny(), _data()
    out = implicit.grae_loss(model, x, torch.tensor(beta, dtype=torch.float64), _noise(), {})
    h = model.encode(x)[0]
    A = _brute_gauss_newton(model, h)
    expected = torch.logdet(torch.eye(D_LAT, dtype=x.dtype) + A / beta)
    torch.testing.assert_close(out["log_det"], expected)
    torch.testing.assert_close(out["loss"], _brute_grae(model, x, beta))


def test_grae_gradients_match_autograd_of_brute_force():
    beta = 0.3
    model, x = Tiny(), _data()
    params = dict(model.named_parameters())
    ours = torch.autograd.grad(
        implicit.grae_loss(model, x, torch.tensor(beta, dtype=torch.float64), _noise(), {})[
            "loss"].sum(), list(params.values()))
    brute = torch.autograd.grad(_brute_grae(model, x, beta).sum(), list(params.values()))
    for name, a, b in zip(params, ours, brute, strict=True):
        torch.testing.assert_close(a, b, msg=name)
        assert b.abs().sum() > 0, name  # every parameter influences the loss


def test_grae_gradient_of_decoder_bias_matches_finite_differences():
    model, x = Tiny(), _data()
    beta = torch.tensor(0.2, dtype=torch.float64)
    bias = model.dec[0].bias.detach().clone().requires_grad_(True)  # moves tanh' and so J

    def loss_of(w):
        p = {**dict(model.named_parameters()), "dec.0.bias": w}
        tiny = _Functional(model, p)
        return implicit.grae_loss(tiny, x, beta, _noise(), {})["loss"].sum()

    assert torch.autograd.gradcheck(loss_of, (bias,))


class _Functional:
    """encode/decode of ``model`` evaluated with the parameters ``params`` (functional_call)."""

    def __init__(self, model: nn.Module, params: dict):
        self.model, self.params = model, params
        self.likelihood = model.likelihood
        self.modules = model.modules

    def encode(self, x):
        return self._call("encode", x)

    def decode(self, z):
        return self._call("decode", z)

    def _call(self, method: str, arg: torch.Tensor):
        wrapper = _Method(self.model, method)
        return functional_call(wrapper, {f"inner.{k}": v for k, v in self.params.items()}, (arg,))


class _Method(nn.Module):
    """``forward`` = ``inner.<method>`` so functional_call can swap the parameters."""

    def __init__(self, inner: nn.Module, method: str):
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, arg):
        return getattr(self.inner, self.method)(arg)


def test_grae_reports_implied_posterior_kl_and_taylor_distortion():
    beta = 0.7
    model, x = Tiny(), _data()
    out = implicit.grae_loss(model, x, torch.tensor(beta, dtype=torch.float64), _noise(), {})
    h = model.encode(x)[0].detach()
    A = _brute_gauss_newton(model, h).detach()
    sigma = torch.linalg.inv(torch.eye(D_LAT, dtype=x.dtype) + A / beta)
    q = MultivariateNormal(h, covariance_matrix=sigma)
    p = MultivariateNormal(torch.zeros_like(h), torch.eye(D_LAT, dtype=x.dtype).expand_as(sigma))
    torch.testing.assert_close(out["rate"], kl_divergence(q, p))
    bce = nn.functional.binary_cross_entropy_with_logits(model.decode(h), x, reduction="none")
    taylor = bce.sum(1) + 0.5 * torch.einsum("bij,bji->b", A, sigma)
    torch.testing.assert_close(out["taylor_distortion"], taylor)
    torch.testing.assert_close(out["distortion"], bce.sum(1))


def test_hadamard_bound_upper_bounds_log_det_with_equality_for_orthogonal_columns():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(50, 7, 4, dtype=torch.float64, generator=g)  # (n, D, d): H^½J
    A = M.transpose(1, 2) @ M
    for beta in (0.01, 1.0, 10.0):
        bound, exact = implicit.hadamard_bound(A, beta), implicit.log_det_regulariser(A, beta)
        assert (bound > exact + 1e-9).all()
        torch.testing.assert_close(exact, torch.logdet(torch.eye(4, dtype=A.dtype) + A / beta))
    Q, _ = torch.linalg.qr(M)  # orthonormal columns, then distinct column norms
    ortho = Q * torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    A = ortho.transpose(1, 2) @ ortho
    torch.testing.assert_close(implicit.hadamard_bound(A, 0.3),
                               implicit.log_det_regulariser(A, 0.3))


def test_one_column_estimator_is_unbiased_for_hadamard_bound():
    beta = 0.4
    model, x = Tiny(), _data()
    h = model.encode(x)[0]
    A = _brute_gauss_newton(model, h).detach()
    a = torch.diagonal(A, dim1=1, dim2=2) / beta  # (B, d)
    estimates, rates = [], []
    for c in range(D_LAT):
        u = torch.full((BATCH,), (c + 0.5) / D_LAT, dtype=torch.float64)
        out = implicit.grae_approx_loss(model, x, torch.tensor(beta, dtype=torch.float64),
                                        _noise(u=u), {})
        torch.testing.assert_close(out["log_det"], D_LAT * torch.log1p(a[:, c]))
        estimates.append(out["log_det"])
        rates.append(out["rate"])
    torch.testing.assert_close(torch.stack(estimates).mean(0), implicit.hadamard_bound(A, beta))
    # mean-field optimum Σ_ii = 1/(1 + A_ii/β): its KL, averaged over the sampled column
    var = 1 / (1 + a)
    kl = 0.5 * (h.square().sum(1) + (var - var.log() - 1).sum(1))
    torch.testing.assert_close(torch.stack(rates).mean(0), kl.detach())


def test_ae_is_reconstruction_only_with_undefined_rate():
    model, x = Tiny(), _data()
    out = implicit.ae_loss(model, x, torch.tensor(1.0, dtype=torch.float64), _noise(), {})
    bce = nn.functional.binary_cross_entropy_with_logits(
        model.decode(model.encode(x)[0]), x, reduction="none").sum(1)
    torch.testing.assert_close(out["loss"], bce)
    assert torch.isnan(out["rate"]).all()


def test_block_scale_tril_layout():
    d, b = 4, 2
    params = torch.randn(3, 2 * 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    L = implicit.block_scale_tril(params, d, b)
    for n in range(3):
        blocks = []
        for k in range(2):
            p = params[n, 3 * k: 3 * k + 3]  # (log σ²₁, log σ²₂, lower entry)
            blocks.append(torch.tensor([[math.exp(p[0] / 2), 0.0], [p[2], math.exp(p[1] / 2)]],
                                       dtype=torch.float64))
        torch.testing.assert_close(L[n], torch.block_diag(*blocks))


def test_block_vae_loss_with_one_full_block_matches_brute_force():
    model, x, noise = Tiny(n_params=6), _data(), _noise()  # b = d = 3: full covariance
    beta = torch.tensor(0.6, dtype=torch.float64)
    out = implicit.block_vae_loss(model, x, beta, noise, {"block_size": 3})
    mu, params = model.encode(x)
    L = implicit.block_scale_tril(params, D_LAT, 3)
    q = MultivariateNormal(mu, scale_tril=L)
    p = MultivariateNormal(torch.zeros_like(mu), torch.eye(D_LAT, dtype=x.dtype).expand_as(L))
    z = mu + torch.einsum("bij,bj->bi", L, noise["eps"])
    bce = nn.functional.binary_cross_entropy_with_logits(model.decode(z), x, reduction="none")
    torch.testing.assert_close(out["rate"], kl_divergence(q, p))
    torch.testing.assert_close(out["distortion"], bce.sum(1))
    torch.testing.assert_close(out["loss"], bce.sum(1) + beta * kl_divergence(q, p))


def test_block_vae_with_block_size_one_equals_mean_field_beta_vae():
    obj = get_objective("beta_vae_block")
    assert obj.posterior_params(D_LAT, {"block_size": 1}) == beta_vae.posterior_params(D_LAT, {})
    model, x, noise = Tiny(n_params=D_LAT), _data(), _noise()
    beta = torch.tensor(0.8, dtype=torch.float64)
    ours = obj.loss(model, x, beta, noise, {"block_size": 1})
    ref = beta_vae.loss(model, x, beta, noise, {})
    for key in ("loss", "distortion", "rate"):  # beta_vae computes in float32
        torch.testing.assert_close(ours[key], ref[key], check_dtype=False)


def test_block_posterior_params_validates_block_size():
    assert implicit.block_posterior_params(10, {"block_size": 2}) == 5 * 3
    assert implicit.block_posterior_params(10, {"block_size": 5}) == 2 * 15
    with pytest.raises(InputError, match="divisor"):
        implicit.block_posterior_params(10, {"block_size": 3})


def test_gauss_newton_stays_float32_under_bf16_autocast():
    """precision = "bf16": A = MᵀM feeds a log det and a Cholesky, so it is never bf16."""
    from benchmark.models import build_model

    torch.manual_seed(0)
    model, z = build_model("mlp1"), torch.randn(4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, J = implicit.decoder_jacobian(model, z)
        _, A = implicit.gauss_newton(model, z)
    M = (model.likelihood.curvature_sqrt(logits).unsqueeze(-1) * J).double()
    assert A.dtype == torch.float32
    torch.testing.assert_close(A.double(), M.mT @ M, rtol=1e-5, atol=1e-5)


def test_implied_posterior_is_inverse_of_precision():
    beta = 0.25
    model, x = Tiny(), _data()
    mu, L = implicit.implied_posterior(model, x, beta, {})
    A = _brute_gauss_newton(model, mu).detach()
    precision = torch.eye(D_LAT, dtype=x.dtype) + A / beta
    torch.testing.assert_close(L @ L.transpose(1, 2), torch.linalg.inv(precision))
    assert torch.equal(L, torch.tril(L))
    _, L_default = implicit.implied_posterior(model, x, None, {})  # AE: β = 1
    _, L_one = implicit.implied_posterior(model, x, 1.0, {})
    torch.testing.assert_close(L_default, L_one)


@pytest.mark.parametrize("name,options,n_params", [
    ("grae", {}, 0), ("grae_approx", {}, 0), ("ae", {}, 0),
    ("beta_vae_block", {"block_size": 3}, 6)])
def test_vmap_over_ensemble_matches_per_model_values_and_gradients(name, options, n_params):
    """What the trainer does: stack two models, vmap loss and its parameter gradient."""
    obj = get_objective(name)
    models = [Tiny(n_params, seed=s) for s in (0, 1)]
    betas = torch.tensor([0.1, 2.0], dtype=torch.float64)
    xs = torch.stack([_data(1), _data(5)])
    noises = [_noise(2), _noise(7)]
    params, buffers = stack_module_state(models)
    base = Tiny(n_params)

    def per_model(p, b, x, beta, eps, u):
        m = _Functional(base, {**p, **b})
        out = obj.loss(m, x, beta, {"eps": eps, "u": u}, options)
        return out["loss"].mean(), out

    inputs = (xs, betas, torch.stack([n["eps"] for n in noises]),
              torch.stack([n["u"] for n in noises]))
    grad_fn = torch.func.grad(per_model, has_aux=True)
    grads, outs = vmap(grad_fn, randomness="error")(params, buffers, *inputs)
    # the trainer's path: vmapped forward, ordinary backward of the summed losses
    losses, _ = vmap(per_model, randomness="error")(params, buffers, *inputs)
    backward = torch.autograd.grad(losses.sum(), list(params.values()))
    for g_func, g_back in zip(grads.values(), backward, strict=True):
        torch.testing.assert_close(g_func, g_back)
    for i, model in enumerate(models):
        ref = obj.loss(model, xs[i], betas[i], noises[i], options)
        for key, value in ref.items():
            torch.testing.assert_close(outs[key][i], value.detach(), equal_nan=True)
        ref_grads = torch.autograd.grad(ref["loss"].mean(), list(model.parameters()))
        for (pname, _), g in zip(model.named_parameters(), ref_grads, strict=True):
            torch.testing.assert_close(grads[pname][i], g, msg=pname)


@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])
def test_grae_runs_and_backpropagates_on_real_architectures(arch):
    from benchmark.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, latent_dim=10, posterior_params=0)
    x = torch.rand(2, 3, 32, 32)
    out = implicit.grae_loss(model, x, torch.tensor(0.5), {"u": torch.rand(2)}, {})
    out["loss"].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # distortion + β/2 (‖h‖² + log det) with log det ≥ 0: the loss bounds the BCE from above
    assert (out["loss"] >= out["distortion"]).all()
    assert torch.isfinite(out["rate"]).all() and (out["rate"] >= 0).all()


def test_non_finite_curvature_gives_nan_instead_of_raising_inside_vmap():
    """A diverged model must not stop its ensemble: NaN in, NaN out, the others unaffected."""
    A = torch.eye(3, dtype=torch.float64).expand(2, 4, 3, 3).clone()
    A[1, 0, 0, 0], A[1, 1] = math.nan, math.inf
    out = vmap(implicit.log_det_regulariser)(A, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.isnan(out[1, :2]).all()
    torch.testing.assert_close(out[0], torch.full((4,), 3 * math.log(3.0), dtype=torch.float64))
    torch.testing.assert_close(out[1, 2:], out[0, 2:])
