"""Implicit-regularisation objectives of Kumar & Poole (2020), SPEC §7.

Per example, with a deterministic encoder mean h = h(x) ∈ R^d, decoder outputs ℓ = g(h) ∈ R^D
(D = C·H·W), their Jacobian J = ∂ℓ/∂z at h (D × d), and the curvature H of −log p(x|ℓ) in the
outputs, independent of x, from the model's likelihood (``likelihood.curvature_sqrt``):
Bernoulli H = diag(σ(ℓ)(1 − σ(ℓ))) (their eq. 12); Gaussian with mean σ(ℓ) and std s,
H = diag(σ'(ℓ))²/s², i.e. H = I/s² for the mean (their eq. 13). Below, BCE(x, ℓ) stands for
the likelihood's −log p(x|ℓ) whichever it is:

    A = JᵀHJ = (H^½J)ᵀ(H^½J)                      (d × d, the Gauss–Newton matrix)

- ``grae``        BCE(x, ℓ) + (β/2)‖h‖² + (β/2)·log det(I + A/β)        (their eq. 12)
- ``grae_approx`` BCE(x, ℓ) + (β/2)‖h‖² + (β/2)·d·log(1 + A_cc/β),  c = ⌊u·d⌋ ~ U{0..d−1},
                  an unbiased one-column estimate of the Hadamard bound Σᵢ log(1 + A_ii/β)
                  ≥ log det(I + A/β)                                         (their eq. 14)
- ``ae``          BCE(x, ℓ)                                                  (no regulariser)
- ``beta_vae_block`` D + β·KL with a block-diagonal Gaussian posterior (Cholesky per block).

GRAE is the β-VAE objective after a second-order Taylor expansion of log p(x|z) about h
(their eq. 7) and optimisation over a full posterior covariance, whose optimum is the
*implied posterior* N(h, Σ), Σ = (I + A/β)⁻¹ (their eq. 11). We report for it

    distortion = BCE(x, ℓ)                               (the reconstruction at the mean)
    rate       = KL(N(h, Σ) ‖ N(0, I)) = ½(‖h‖² + tr Σ + log det(I + A/β) − d)
    taylor_distortion = BCE(x, ℓ) + ½ tr(AΣ)             (eq. 7's expected distortion)

so that ``loss = taylor_distortion + β·rate`` exactly (tr(AΣ) + β tr Σ = β d at the optimum).
The Hadamard bound is the same Taylor objective optimised over *diagonal* Σ only
(Σ_ii = 1/(1 + A_ii/β)); ``grae_approx`` therefore reports the one-column estimate of that
mean-field posterior's KL, ½(‖h‖² + d·[1/(1+a) + log(1+a) − 1]), a = A_cc/β.
``ae`` reports rate NaN: a deterministic encoder has no finite rate (evaluation places it on
the RD plane through its implied posterior instead, see :func:`implied_posterior`).

All losses are per-model and per-example, free of data-dependent Python control flow, so the
trainer can vmap them over an ensemble (torch.func). Jacobians use forward mode (one
``torch.func.jvp`` per latent direction, vmapped) and are differentiable in the decoder
parameters (reverse-over-forward).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor

from benchmark.gaussians import kl_tril_to_standard, reparameterise
from benchmark.objectives import Objective, upcast
from rdbench.io import InputError

# ---------------------------------------------------------------------------------------------
# Pure matrix and likelihood helpers


def log_det_regulariser(A: Tensor, beta: Tensor | float) -> Tensor:
    """log det(I + A/β) for symmetric PSD A (..., d, d) → (...), via Cholesky in float64.

    float64 because I + A/β has condition number up to 1 + λ_max/β (≈ 1e6 for β = 1e-3).
    A failed factorisation (non-finite A) yields NaN instead of raising, so one diverged model
    does not stop a vmapped ensemble.
    """
    L, ok = _precision_cholesky(A, beta)
    return _nan_unless(ok, _log_det(L)).to(A.dtype)


def hadamard_bound(A: Tensor, beta: Tensor | float) -> Tensor:
    """Σᵢ log(1 + A_ii/β) ≥ log det(I + A/β) (Hadamard; = iff A diagonal): (..., d, d) → (...)."""
    return torch.log1p(torch.diagonal(A, dim1=-2, dim2=-1) / beta).sum(-1)


def _precision_cholesky(A: Tensor, beta: Tensor | float) -> tuple[Tensor, Tensor]:
    """Lower Cholesky factor L of I + A/β in float64 (..., d, d), and success flags (...)."""
    d = A.shape[-1]
    beta = torch.as_tensor(beta, dtype=torch.float64, device=A.device)
    P = torch.eye(d, dtype=torch.float64, device=A.device) + A.to(torch.float64) / beta
    L, info = torch.linalg.cholesky_ex(0.5 * (P + P.transpose(-2, -1)))
    return L, info == 0


def _log_det(L: Tensor) -> Tensor:
    """log det(LLᵀ) = 2 Σᵢ log L_ii: (..., d, d) → (...)."""
    return 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def _implied_kl(h: Tensor, L: Tensor) -> Tensor:
    """½(‖h‖² + tr P⁻¹ + log det P − d) for P = LLᵀ; tr P⁻¹ = ‖L⁻¹‖_F². (B,) in L's dtype."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
    trace_sigma = torch.linalg.solve_triangular(L, eye, upper=False).square().sum((-2, -1))
    return 0.5 * (h.to(L.dtype).square().sum(-1) + trace_sigma + _log_det(L) - h.shape[-1])



def _nan_unless(ok: Tensor, value: Tensor) -> Tensor:
    return torch.where(ok, value, torch.full_like(value, math.nan))


# ---------------------------------------------------------------------------------------------
# Decoder Jacobians (forward mode)


@contextlib.contextmanager
def frozen_batch_statistics(model: Any):
    """BatchNorm layers of ``model`` normalise with the batch's statistics (training) or their
    running ones (eval) but do not update the running ones, for the with-block.

    Jacobians are taken by forward-mode differentiation through the decoder, which cannot
    write the running statistics (torch.func forbids mutating captured tensors). In training
    mode the Jacobian then includes the (O(1/B)) dependence of the batch statistics on the
    other examples' latents. A no-op for models without BatchNorm.
    """
    layers = _tracking_batch_norms(model)
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def _tracking_batch_norms(model: Any) -> list[torch.nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def update_running_statistics(model: Any, z: Tensor) -> None:
    """One plain decoder pass (no gradient) so that BatchNorm layers in training mode update
    their running statistics once per step, as a β-VAE's decoder pass does: GRAE evaluates
    its decoder only inside Jacobian computations, which leave them alone."""
    if any(m.training for m in _tracking_batch_norms(model)):
        with torch.no_grad():
            model.decode(z.detach())


def decoder_jacobian(model: Any, z: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs ℓ = g(z) (B, D) and their Jacobian J = ∂ℓ/∂z (B, D, d), by d vmapped JVPs.

    Each example's outputs depend only on its own z (no cross-batch layers; see
    :func:`frozen_batch_statistics` for BatchNorm), so one JVP with the tangent e_k broadcast
    over the batch gives column k of every example's Jacobian.
    """
    d = z.shape[-1]
    basis = torch.eye(d, dtype=z.dtype, device=z.device)  # (d, d)

    def decode(zz: Tensor) -> Tensor:
        return model.decode(zz).flatten(1)

    def column(e: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(decode, (z,), (e.expand_as(z),))  # (B, D), (B, D)

    with frozen_batch_statistics(model):
        logits, J = torch.func.vmap(column, out_dims=(0, 2))(basis)  # (d, B, D), (B, D, d)
    return upcast(logits[0]), upcast(J)


def gauss_newton(model: Any, z: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs (B, D) and A = JᵀHJ (B, d, d) at z, H from the model's likelihood."""
    logits, J = decoder_jacobian(model, z)
    M = model.likelihood.curvature_sqrt(logits).unsqueeze(-1) * J  # (B, D, d) = H^½ J
    with torch.autocast(M.device.type, enabled=False):  # A's log det and Cholesky need fp32
        return logits, M.transpose(-2, -1) @ M


def decoder_column(model: Any, z: Tensor, column: Tensor) -> tuple[Tensor, Tensor]:
    """Outputs (B, D) and the Jacobian column J[:, :, cᵢ] of each example (B, D): one JVP.

    ``column`` (B,) int64 in [0, d).
    """
    d = z.shape[-1]
    tangent = (torch.arange(d, device=z.device) == column.unsqueeze(-1)).to(z.dtype)  # (B, d)
    with frozen_batch_statistics(model):
        logits, col = torch.func.jvp(lambda zz: model.decode(zz).flatten(1), (z,), (tangent,))
    return upcast(logits), upcast(col)


# ---------------------------------------------------------------------------------------------
# Objectives


def grae_loss(model: Any, x: Tensor, beta: Tensor, noise: dict, options: dict) -> dict[str, Tensor]:
    """GRAE (eq. 12; eq. 13 for a Gaussian likelihood): −log p(x|ℓ) + (β/2)‖h‖²
    + (β/2) log det(I + A/β), per example."""
    h = upcast(model.encode(x)[0])
    update_running_statistics(model, h)
    logits, A = gauss_newton(model, h)
    distortion = model.likelihood.nll(logits, x.flatten(1))
    L, ok = _precision_cholesky(A, beta)
    log_det = _nan_unless(ok, _log_det(L)).to(h.dtype)
    rate = _nan_unless(ok, _implied_kl(h, L)).to(h.dtype)
    loss = distortion + 0.5 * beta * (h.square().sum(-1) + log_det)
    taylor = loss - beta * rate  # = BCE + ½ tr(AΣ), see the module docstring
    return {"loss": loss, "distortion": distortion, "rate": rate, "log_det": log_det,
            "taylor_distortion": taylor}


def grae_approx_loss(model: Any, x: Tensor, beta: Tensor, noise: dict,
                     options: dict) -> dict[str, Tensor]:
    """GRAE≈: d·log(1 + ‖[H^½J]_{:,c}‖²/β) with c = ⌊u·d⌋ replaces the log det (eq. 14, k = 1)."""
    h = upcast(model.encode(x)[0])
    d = h.shape[-1]
    column = (noise["u"] * d).floor().long().clamp(0, d - 1)  # (B,)
    update_running_statistics(model, h)
    logits, col = decoder_column(model, h, column)
    a = (model.likelihood.curvature_sqrt(logits) * col).square().sum(-1) / beta  # A_cc/β (B,)
    log_det = d * torch.log1p(a)
    distortion = model.likelihood.nll(logits, x.flatten(1))
    h2 = h.square().sum(-1)
    rate = 0.5 * (h2 + d * (1 / (1 + a) + torch.log1p(a) - 1))
    loss = distortion + 0.5 * beta * (h2 + log_det)
    return {"loss": loss, "distortion": distortion, "rate": rate, "log_det": log_det}


def ae_loss(model: Any, x: Tensor, beta: Tensor, noise: dict, options: dict) -> dict[str, Tensor]:
    """Deterministic autoencoder: BCE(x, g(h(x))); rate NaN (undefined for a point mass)."""
    h = upcast(model.encode(x)[0])
    distortion = model.likelihood.nll(model.decode(h), x)
    return {"loss": distortion, "distortion": distortion,
            "rate": torch.full_like(distortion, math.nan)}


def block_vae_loss(model: Any, x: Tensor, beta: Tensor, noise: dict,
                   options: dict) -> dict[str, Tensor]:
    """β-VAE, q(z|x) = N(μ, LLᵀ) with L block-diagonal: BCE(x, g(μ + Lε)) + β·KL, per example."""
    mu, params = map(upcast, model.encode(x))
    L = block_scale_tril(params, mu.shape[-1], _block_size(options))  # (B, d, d)
    z = reparameterise(noise["eps"], mu, scale_tril=L)
    distortion = model.likelihood.nll(model.decode(z), x)
    rate = kl_tril_to_standard(mu, L)
    return {"loss": distortion + beta * rate, "distortion": distortion, "rate": rate}


# ---------------------------------------------------------------------------------------------
# Block-diagonal Cholesky parameterisation


def block_posterior_params(latent_dim: int, options: dict) -> int:
    """Encoder outputs beyond the mean: (d/b) blocks × b(b+1)/2 Cholesky entries."""
    b = _block_size(options)
    if b < 1 or latent_dim % b:
        raise InputError(f"block_size {b} must be a positive divisor of latent_dim {latent_dim}")
    return latent_dim // b * (b * (b + 1) // 2)


def block_scale_tril(params: Tensor, latent_dim: int, block_size: int) -> Tensor:
    """Block-diagonal lower Cholesky factor L (B, d, d) from encoder outputs (B, n·b(b+1)/2).

    Per block k (in order), b(b+1)/2 numbers: first b "log-variances" p with L_ii = exp(p/2)
    (so b = 1 is exactly the mean-field (μ, log σ²) parameterisation), then the strictly lower
    entries of the block in ``torch.tril_indices(b, b, -1)`` (row-major) order, unconstrained.
    """
    b = block_size
    m = b * (b + 1) // 2
    blocks = params.unflatten(-1, (latent_dim // b, m))  # (B, n, m)
    values = torch.cat([torch.exp(0.5 * blocks[..., :b]), blocks[..., b:]], -1).flatten(-2)
    padded = torch.cat([values, torch.zeros_like(values[..., :1])], -1)  # last entry = 0
    index = _block_index(latent_dim, b, values.shape[-1]).to(params.device)
    return padded.index_select(-1, index).unflatten(-1, (latent_dim, latent_dim))


def _block_index(d: int, b: int, zero: int) -> Tensor:
    """(d·d,) positions into the flat parameter vector; ``zero`` marks entries fixed at 0."""
    m = b * (b + 1) // 2
    index = torch.full((d, d), zero, dtype=torch.long)
    rows, cols = torch.tril_indices(b, b, -1)
    for k in range(d // b):
        o = k * b
        for i in range(b):
            index[o + i, o + i] = k * m + i
        for j, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            index[o + r, o + c] = k * m + b + j
    return index.flatten()


def _block_size(options: dict) -> int:
    return int(options.get("block_size", 1))


# ---------------------------------------------------------------------------------------------
# Implied posteriors (evaluation: place every model on the RD plane)


def implied_posterior(model: Any, x: Tensor, beta: float | Tensor | None,
                      options: dict) -> tuple[Tensor, Tensor]:
    """GRAE / GRAE≈ / AE: N(h(x), Σ), Σ = (I + A/β)⁻¹; returns (μ (B, d), scale_tril (B, d, d)).

    ``beta`` is the run's β (for an AE too: its loss ignores β, and each AE run of a grid
    is placed through its own β); ``beta=None`` means β = 1, the posterior implied for the
    ELBO.
    """
    beta = 1.0 if beta is None else beta
    h = upcast(model.encode(x)[0])
    _, A = gauss_newton(model, h)
    L, _ = _precision_cholesky(A, beta)
    return h, torch.linalg.cholesky(torch.cholesky_inverse(L)).to(h.dtype)


def block_posterior(model: Any, x: Tensor, beta: float | Tensor | None,
                    options: dict) -> tuple[Tensor, Tensor]:
    """Block-diagonal β-VAE: the encoder's own (μ, L); ``beta`` is unused."""
    mu, params = map(upcast, model.encode(x))
    return mu, block_scale_tril(params, mu.shape[-1], _block_size(options))


def _deterministic(latent_dim: int, options: dict) -> int:
    return 0


OBJECTIVES: dict[str, Objective] = {
    "grae": Objective("grae", grae_loss, _deterministic),
    "grae_approx": Objective("grae_approx", grae_approx_loss, _deterministic),
    "ae": Objective("ae", ae_loss, _deterministic, uses_beta=False),
    "beta_vae_block": Objective("beta_vae_block", block_vae_loss, block_posterior_params),
}

# The posterior each objective implies, for evaluation on the RD plane (see implied_posterior).
POSTERIORS = {"grae": implied_posterior, "grae_approx": implied_posterior,
              "ae": implied_posterior, "beta_vae_block": block_posterior}
