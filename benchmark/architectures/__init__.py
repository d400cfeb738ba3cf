"""The networks a grid can name: built-in architectures and the user's own classes.

Each module of this package defines ``ARCHITECTURES = {name: Architecture}`` (a new built-in
architecture is one new module); :func:`registry` collects them. Any other name of the form
``"package.module:Class"`` is the user's own model class (:mod:`benchmark.architectures.user`).

A built-in architecture builds an encoder (images (B, C, H, W) -> (B, d + P): the posterior
mean and P posterior parameters) and a decoder (latents (B, d) -> (B, C, H, W), one
unconstrained output per pixel value that the likelihood interprets).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from torch import nn

from rdbench.io import InputError
from rdbench.plugins import collect

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


@dataclass(frozen=True)
class Architecture:
    """A built-in network family member.

    ``build(image_shape, latent_dim, n_out, activation, **options) -> (encoder, decoder)``;
    ``family`` and ``depth`` label it in figures (MLP vs CNN, 1-layer vs 3-layer);
    ``options`` are the ``[architecture_options]`` it accepts, with their defaults.
    """

    name: str
    build: Callable[..., tuple[nn.Module, nn.Module]]
    family: str
    depth: int
    summary: str
    activation: str = "relu"
    options: dict[str, Any] = field(default_factory=dict)
    order: int = 100  # where it is listed (help texts, figure legends)


@cache
def registry() -> dict[str, Architecture]:
    """Every built-in architecture, by name (MLPs, then CNNs, then the rest)."""
    found = collect(__name__, "ARCHITECTURES", "architecture")
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


def is_user_architecture(name: str) -> bool:
    """``"package.module:Class"``: a user's model class rather than a built-in name."""
    return ":" in name


def get_architecture(name: str) -> Architecture:
    """The built-in architecture ``name``; one line listing the valid names otherwise."""
    found = registry()
    if name not in found:
        raise InputError(f"unknown architecture {name!r}; valid: {', '.join(found)} or your "
                         "own class as \"package.module:Class\"")
    return found[name]


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise InputError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def check_options(arch: Architecture, options: dict[str, Any]) -> dict[str, Any]:
    """The architecture's options with the given ones applied (unknown keys refused)."""
    unknown = sorted(set(options) - set(arch.options))
    if unknown:
        valid = ", ".join(arch.options) or "none"
        raise InputError(f"architecture {arch.name} has no option {unknown[0]!r} "
                         f"(its options: {valid})")
    return {**arch.options, **options}
