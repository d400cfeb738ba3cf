"""Training objectives: pure per-model functions the trainer vmaps over the ensemble.

An :class:`Objective` maps ``(model, x (B,C,H,W), beta (0-dim), noise, options)`` to a
dict of per-example tensors (B,) with at least ``loss``, ``distortion`` and ``rate`` (nats);
the distortion is always ``model.likelihood.nll`` (:mod:`benchmark.likelihoods`).
``noise = {"eps": (B, d) standard normal, "u": (B,) uniform [0, 1)}`` comes from the run's
own random stream; objectives must draw no randomness of their own (the trainer vmaps them
with ``randomness="error"``).

``OBJECTIVES`` (module attribute, as in DESIGN.md) is the merged registry too.

The registry is built lazily (:func:`get_objective`, :func:`objective_names`,
:func:`all_objectives`) from ``beta_vae`` here plus ``benchmark.ablations.OBJECTIVES`` and
``benchmark.implicit.OBJECTIVES``: those modules import :class:`Objective` and the helpers
below from this one, so importing them at the top of this module would be circular.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmark.gaussians import gaussian_kl_to_standard as gaussian_kl
from benchmark.gaussians import reparameterise
from rdbench.io import InputError


@dataclass(frozen=True)
class Objective:
    """A named loss; ``posterior_params(latent_dim, options)`` is build_model's argument."""

    name: str
    loss: Callable  # (model, x, beta, noise, options) -> dict[str, Tensor (B,)]
    posterior_params: Callable[[int, dict], int | None]
    uses_beta: bool = True  # False: runs differing only in β train identical models


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision (autocast) outputs -> float32; float32 and float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _beta_vae_loss(model, x, beta, noise, options) -> dict[str, torch.Tensor]:
    """β-VAE: loss = D + β R, D = −log p(x|z) (the model's likelihood) from one
    reparameterised sample, R the closed-form KL."""
    mu, logvar = model.encode(x)  # (B, d), (B, d)
    z = reparameterise(noise["eps"], mu, logvar)
    distortion = model.likelihood.nll(model.decode(z), x)
    rate = gaussian_kl(upcast(mu), upcast(logvar))
    return {"loss": distortion + beta * rate, "distortion": distortion, "rate": rate}


def _mean_field(latent_dim: int, options: dict) -> int:
    return latent_dim


beta_vae = Objective("beta_vae", _beta_vae_loss, _mean_field)

BASE_OBJECTIVES: dict[str, Objective] = {"beta_vae": beta_vae}


def all_objectives() -> dict[str, Objective]:
    """The merged registry: ``beta_vae`` + ablations + implicit-regularisation objectives."""
    from benchmark import ablations, implicit

    merged = dict(BASE_OBJECTIVES)
    for extra in (ablations.OBJECTIVES, implicit.OBJECTIVES):
        clash = set(extra) & set(merged)
        if clash:
            raise RuntimeError(f"objective names defined twice: {sorted(clash)}")
        merged.update(extra)
    return merged


def build_objective_model(objective: str, architecture: str, latent_dim: int,
                          objective_options: dict, **model: object) -> torch.nn.Module:
    """The model ``objective`` trains: ``build_model`` with the encoder head it needs;
    ``model`` holds the other :class:`~benchmark.models.ModelSpec` fields (image_shape,
    likelihood, decoder_std, activation, options)."""
    from benchmark.models import build_model

    n_params = get_objective(objective).posterior_params(latent_dim, objective_options)
    return build_model(architecture, latent_dim=latent_dim, posterior_params=n_params, **model)


def objective_names() -> tuple[str, ...]:
    """Names of every registered objective, sorted."""
    return tuple(sorted(all_objectives()))


def get_objective(name: str) -> Objective:
    """The objective called ``name``; :class:`InputError` listing valid names if unknown."""
    registry = all_objectives()
    if name not in registry:
        raise InputError(f"unknown objective {name!r}; valid: {', '.join(sorted(registry))}")
    return registry[name]


def __getattr__(name: str):
    """``objectives.OBJECTIVES`` (DESIGN.md) is the merged registry, built on first access."""
    if name == "OBJECTIVES":
        return all_objectives()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
