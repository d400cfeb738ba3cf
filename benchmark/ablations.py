"""The rate-decomposition ablations of Bozkurt et al. (2021), SPEC §3.

The rate splits as R = I_q(x;z) + KL(q(z) ‖ p(z)) (SPEC §5). Each ablation keeps one term:

- ``no_mi``           loss = D + β·KL̂(q(z) ‖ p(z))   (mutual-information term removed)
- ``no_marginal_kl``  loss = D + β·Î(x;z)             (marginal-KL term removed)

with, per example i of a training batch of B (one reparameterised zᵢ = μᵢ + σᵢ ⊙ εᵢ),
ℓᵢᵢ = log q(zᵢ|xᵢ), log q̂(zᵢ) the stratified minibatch estimate of
:func:`analysis.estimators.minibatch_log_qz` with N = ``options["dataset_size"]`` (the
training-set size, passed by the runner), and log p(zᵢ) = log N(zᵢ; 0, I):

    Îᵢ = ℓᵢᵢ − log q̂(zᵢ),    KL̂ᵢ = log q̂(zᵢ) − log p(zᵢ),    Îᵢ + KL̂ᵢ = ℓᵢᵢ − log p(zᵢ).

The returned dict reports ``rate`` = the closed-form KL(q(z|xᵢ) ‖ p(z)) (as ``beta_vae``
does, so histories compare) plus ``mutual_information`` and ``marginal_kl`` (all (B,), nats).
The per-example terms depend on the whole batch; their batch mean is the estimator.
"""

from __future__ import annotations

import torch

from benchmark.gaussians import log_normal_diag, log_standard_normal, minibatch_log_qz
from benchmark.objectives import Objective, gaussian_kl, reparameterise, upcast
from rdbench.io import InputError


def rate_terms(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor,
               dataset_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Îᵢ, KL̂ᵢ) = (ℓᵢᵢ − log q̂(zᵢ), log q̂(zᵢ) − log p(zᵢ)); mu, logvar, z (B, d) -> 2 × (B,)."""
    log_qz = minibatch_log_qz(z, mu, logvar, dataset_size=dataset_size)
    return log_normal_diag(z, mu, logvar) - log_qz, log_qz - log_standard_normal(z)


def _parts(model, x, noise, options) -> dict[str, torch.Tensor]:
    """Distortion, closed-form rate and the two rate terms of one batch, all (B,)."""
    mu, logvar = model.encode(x)  # (B, d), (B, d)
    z = reparameterise(noise["eps"], mu, logvar)
    distortion = model.likelihood.nll(model.decode(z), x)
    mu, logvar, z = upcast(mu), upcast(logvar), upcast(z)
    mi, marginal_kl = rate_terms(mu, logvar, z, _dataset_size(options, len(x)))
    return {"distortion": distortion, "rate": gaussian_kl(mu, logvar),
            "mutual_information": mi, "marginal_kl": marginal_kl}


def _no_mi_loss(model, x, beta, noise, options) -> dict[str, torch.Tensor]:
    """loss = D + β·KL̂(q(z) ‖ p(z)) per example."""
    out = _parts(model, x, noise, options)
    return {"loss": out["distortion"] + beta * out["marginal_kl"], **out}


def _no_marginal_kl_loss(model, x, beta, noise, options) -> dict[str, torch.Tensor]:
    """loss = D + β·Î(x;z) per example."""
    out = _parts(model, x, noise, options)
    return {"loss": out["distortion"] + beta * out["mutual_information"], **out}



def _dataset_size(options: dict, batch: int) -> int:
    if "dataset_size" not in options:
        raise InputError("ablation objectives need options['dataset_size'] (training-set size)")
    n = int(options["dataset_size"])
    if n < max(batch, 2):
        raise InputError(f"dataset_size {n} is smaller than the batch ({batch})")
    return n


def _mean_field(latent_dim: int, options: dict) -> int:
    return latent_dim


OBJECTIVES: dict[str, Objective] = {
    "no_mi": Objective("no_mi", _no_mi_loss, _mean_field),
    "no_marginal_kl": Objective("no_marginal_kl", _no_marginal_kl_loss, _mean_field),
}
