"""The Gaussian formulas that training and evaluation share (SPEC §5), pure torch: the one
reparameterisation, the KL to the standard normal prior (mean-field and full/block
covariance), Gaussian log densities and the minibatch estimate of log q(z) that the rate
ablations train with and the rate decomposition evaluates. Imports nothing of ours; the
estimators of ``analysis.estimators`` build on it (the pipeline imports one way).

All quantities are in nats. A Gaussian posterior is given mean-field as ``(mu, logvar)`` or
with a full / block covariance as ``(mu, scale_tril)``, Σ = L Lᵀ with L lower triangular.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)

def gaussian_kl_to_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag e^logvar) ‖ N(0, I)) = ½ Σₖ (μₖ² + e^{logvarₖ} − 1 − logvarₖ).

    mu, logvar: (..., d) -> (...).
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_tril_to_standard(mu: Tensor, scale_tril: Tensor) -> Tensor:
    """KL(N(μ, L Lᵀ) ‖ N(0, I)) = ½ (‖L‖_F² + ‖μ‖² − d) − Σₖ log |Lₖₖ|.

    mu: (..., d), scale_tril: (..., d, d) -> (...).
    """
    d = mu.shape[-1]
    frobenius = scale_tril.square().sum((-2, -1))
    return 0.5 * (frobenius + mu.square().sum(-1) - d) - _half_logdet(scale_tril)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) = −½ (‖z‖² + d log 2π).  z: (..., d) -> (...)."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag e^logvar) = −½ Σₖ [(zₖ − μₖ)² e^{−logvarₖ} + logvarₖ + log 2π].

    z, mu, logvar: broadcastable (..., d) -> (...).
    """
    return -0.5 * ((z - mu).square() * (-logvar).exp() + logvar + LOG_2PI).sum(-1)


def log_normal_tril(z: Tensor, mu: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(z; μ, L Lᵀ) = −½ ‖L⁻¹(z − μ)‖² − Σₖ log |Lₖₖ| − (d/2) log 2π.

    z, mu: (..., d), scale_tril: (..., d, d), batch dimensions broadcastable -> (...).
    """
    diff = z - mu
    d = diff.shape[-1]
    batch = torch.broadcast_shapes(diff.shape[:-1], scale_tril.shape[:-2])
    L = scale_tril.expand(*batch, d, d)
    v = torch.linalg.solve_triangular(L, diff.expand(*batch, d).unsqueeze(-1), upper=False)
    return -0.5 * (v.squeeze(-1).square().sum(-1) + d * LOG_2PI) - _half_logdet(L)


def reparameterise(eps: Tensor, mu: Tensor, logvar: Tensor | None = None,
                   scale_tril: Tensor | None = None) -> Tensor:
    """z = μ + e^{logvar/2} ⊙ ε (mean-field) or z = μ + L ε (full / block covariance) for
    standard normal ε (..., N, d): the one reparameterisation of training and evaluation."""
    if scale_tril is None:
        return mu + (0.5 * logvar).exp() * eps
    return mu + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


def pairwise_log_density(z: Tensor, mu: Tensor, logvar: Tensor | None = None, *,
                         scale_tril: Tensor | None = None) -> Tensor:
    """ℓᵢⱼ = log q(zᵢ | xⱼ) for every pair, direct (differentiable, no cancellation).

    z: (B, d), mu: (M, d), logvar: (M, d) or scale_tril: (M, d, d) -> (B, M).
    """
    _check_posterior(mu, logvar, scale_tril)
    if scale_tril is None:
        return log_normal_diag(z[:, None, :], mu[None], logvar[None])
    d = mu.shape[-1]
    eye = torch.eye(d, dtype=mu.dtype, device=mu.device).expand_as(scale_tril)
    inv = torch.linalg.solve_triangular(scale_tril, eye, upper=False)  # (M, d, d) = L⁻¹
    v = torch.einsum("jab,ib->ija", inv, z) - (inv @ mu.unsqueeze(-1)).squeeze(-1)  # (B, M, d)
    return -0.5 * (v.square().sum(-1) + d * LOG_2PI) - _half_logdet(scale_tril)


def minibatch_log_qz(z: Tensor, mu: Tensor, logvar: Tensor | None = None, *,
                     scale_tril: Tensor | None = None, dataset_size: int) -> Tensor:
    """Stratified minibatch estimate of log q(zᵢ), q(z) = (1/N) Σₙ q(z|xₙ) (Esmaeili+ 2019).

    For a batch of B ≥ 2 distinct examples of a set of N ≥ B, zᵢ ~ q(z|xᵢ),
    ℓᵢⱼ = log q(zᵢ|xⱼ):
        log q̂(zᵢ) = logsumexpⱼ (ℓᵢⱼ + log wᵢⱼ),
        wᵢᵢ = 1/N,  wᵢⱼ = (N − 1) / (N (B − 1)) for j ≠ i   (Σⱼ wᵢⱼ = 1).
    q̂ is unbiased for q(zᵢ) given zᵢ; with B = N it is exact. Differentiable.

    z, mu: (B, d), logvar: (B, d) or scale_tril: (B, d, d) -> (B,).
    """
    B, N = z.shape[0], int(dataset_size)
    if B < 2 or N < B:
        raise ValueError(f"need 2 <= batch size <= dataset_size, got B={B}, N={N}")
    ell = pairwise_log_density(z, mu, logvar, scale_tril=scale_tril)  # (B, B)
    own = torch.eye(B, dtype=torch.bool, device=z.device)
    log_w = torch.full((B, B), math.log(N - 1) - math.log(N) - math.log(B - 1),
                       dtype=ell.dtype, device=ell.device).masked_fill(own, -math.log(N))
    return torch.logsumexp(ell + log_w, dim=1)  # log_w is a constant: vmap-safe


def _check_posterior(mu: Tensor, logvar: Tensor | None, scale_tril: Tensor | None) -> None:
    if (logvar is None) == (scale_tril is None):
        raise ValueError("give exactly one of logvar and scale_tril")
    if logvar is not None and logvar.shape != mu.shape:
        raise ValueError(f"logvar shape {tuple(logvar.shape)} != mu shape {tuple(mu.shape)}")
    want = (*mu.shape, mu.shape[-1])
    if scale_tril is not None and scale_tril.shape != want:
        raise ValueError(f"scale_tril shape {tuple(scale_tril.shape)} != {want}")


def _half_logdet(scale_tril: Tensor) -> Tensor:
    """½ log det(L Lᵀ) = Σₖ log |Lₖₖ|.  (..., d, d) -> (...)."""
    return scale_tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
