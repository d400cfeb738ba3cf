"""Models: an encoder, a decoder and a likelihood, for any image shape (SPEC §3, §10).

Every model maps images x (B, C, H, W) in [0, 1] to encoder outputs (mu (B, d), params
(B, P)) and latents z (B, d) to decoder outputs (B, C, H, W), which its ``likelihood``
(:mod:`benchmark.likelihoods`) scores. ``P = posterior_params`` is whatever the objective
needs beyond the mean: d log-variances for a mean-field Gaussian (the default), 0 for a
deterministic encoder, or the Cholesky entries of a block-diagonal covariance.

The networks come from :mod:`benchmark.architectures` (``mlp1``, ``mlp3``, ``cnn1``,
``cnn3``, ``kp-mnist``, ``kp-celeba``) or are the user's own class (``"pkg.mod:Class"``).
Models only encode and decode: objectives and the trainer (which stacks many models into
one vectorised ensemble) live elsewhere. Built-in models keep the state-dict keys of earlier
versions (``encoder.*``, ``decoder.*``), plus ``likelihood.log_std`` when σ is learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmark.architectures import (
    check_options,
    get_architecture,
    is_user_architecture,
    registry,
)
from benchmark.likelihoods import Likelihood, build_likelihood
from rdbench.io import InputError

ARCHITECTURES = tuple(registry())  # the built-in names
IMAGE_SHAPE = (3, 32, 32)  # Tetrominoes (C, H, W): the default
MAX_LATENT_DIM = 4096


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes a model's structure: what a run's config.json records."""

    architecture: str
    image_shape: tuple[int, int, int] = IMAGE_SHAPE
    latent_dim: int = 10
    posterior_params: int | None = None  # None: latent_dim (a diagonal log-variance)
    likelihood: str = "bernoulli"
    decoder_std: float | str | None = None  # gaussian: σ or "learned"
    activation: str | None = None  # None: the architecture's own
    options: dict[str, Any] = field(default_factory=dict)  # [architecture_options]

    @property
    def n_params(self) -> int:
        return self.latent_dim if self.posterior_params is None else int(self.posterior_params)


class Autoencoder(nn.Module):
    """What every model offers: ``encode``, ``decode``, ``likelihood``, ``latent_dim``."""

    likelihood: Likelihood
    latent_dim: int
    posterior_params: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output of the reconstruction through the posterior mean (no sampling)."""
        mu, _ = self.encode(x)
        return self.decode(mu)


class VAE(Autoencoder):
    """A built-in architecture: ``encoder`` outputs (B, d + P), ``decoder`` (B, C, H, W)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, n_params: int,
                 likelihood: Likelihood | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood if likelihood is not None else build_likelihood()
        self.latent_dim = latent_dim
        self.posterior_params = n_params

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (mu (B, d), params (B, P))."""
        h = self.encoder(x)  # (B, d + P)
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, d) -> decoder output (B, C, H, W)."""
        return self.decoder(z)


class UserVAE(Autoencoder):
    """The user's own class (``net``) with the grid's likelihood attached."""

    def __init__(self, net: nn.Module, latent_dim: int, n_params: int, likelihood: Likelihood):
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.posterior_params = n_params

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z)


def check_spec(spec: ModelSpec) -> None:
    """One line for a spec no model can be built from (before any model is built)."""
    c, h, w = spec.image_shape
    if c not in (1, 3) or min(h, w) < 1:
        raise InputError(f"image shape must be (C, H, W) with C 1 or 3, got {spec.image_shape}")
    if not 1 <= spec.latent_dim <= MAX_LATENT_DIM:
        raise InputError(f"latent_dim must be between 1 and {MAX_LATENT_DIM}, "
                         f"got {spec.latent_dim}")
    if spec.n_params < 0:
        raise InputError(f"posterior_params must be >= 0, got {spec.n_params}")
    build_likelihood(spec.likelihood, spec.decoder_std)


def build_model(architecture: str | ModelSpec, **fields: Any) -> Autoencoder:
    """A freshly initialised model (PyTorch default init, global RNG).

    ``build_model("mlp1")``, ``build_model("cnn1", image_shape=(1, 28, 28), latent_dim=8,
    likelihood="gaussian", decoder_std=0.1)`` or ``build_model(ModelSpec(...))``;
    ``posterior_params=None`` means ``latent_dim`` (a diagonal log-variance), 0 a
    deterministic encoder.
    """
    spec = architecture if isinstance(architecture, ModelSpec) else ModelSpec(architecture,
                                                                              **fields)
    check_spec(spec)
    likelihood = build_likelihood(spec.likelihood, spec.decoder_std)
    if is_user_architecture(spec.architecture):
        from benchmark.architectures.user import build_user_net, check_user_net

        if spec.activation is not None:
            raise InputError(f"activation applies to the built-in architectures; give your "
                             f"model's own through [architecture_options] ({spec.architecture})")
        net = build_user_net(spec.architecture, spec.image_shape, spec.latent_dim,
                             spec.n_params, spec.options)
        check_user_net(spec.architecture, net, spec.image_shape, spec.latent_dim, spec.n_params)
        return UserVAE(net, spec.latent_dim, spec.n_params, likelihood)
    arch = get_architecture(spec.architecture)
    options = check_options(arch, spec.options)
    encoder, decoder = arch.build(tuple(spec.image_shape), spec.latent_dim,
                                  spec.latent_dim + spec.n_params,
                                  spec.activation or arch.activation, **options)
    return VAE(encoder, decoder, spec.latent_dim, spec.n_params, likelihood)


def has_convolutions(model: nn.Module) -> bool:
    """Whether a model holds convolutions (they train faster model by model on a CPU)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _layer_macs(layer: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-accumulates of one example through ``layer`` (0 for parameter-free layers)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    if isinstance(layer, nn.Conv2d):  # every output pixel: Cin * k * k MACs per channel
        return out[0].numel() * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, nn.ConvTranspose2d):  # every input pixel scatters Cout * k * k
        k = layer.kernel_size[0] * layer.kernel_size[1]
        return inp[0].numel() * layer.out_channels * k
    return 0


def describe(model: VAE, image_shape: tuple[int, int, int] | None = None) -> list[dict]:
    """One row per layer of a built-in model: ``part, index, layer, output (shape of one
    example), params, macs``.

    ``macs`` are multiply-accumulates per example in the forward pass (a training step
    costs about 3 × 2 × macs FLOPs per example: forward + backward).
    """
    rows: list[dict] = []
    device = next(model.parameters()).device
    shape = image_shape or _input_shape(model)
    x = torch.zeros(2, *shape, device=device)
    for part, net in (("encoder", model.encoder), ("decoder", model.decoder)):
        if part == "decoder":
            x = torch.zeros(2, model.latent_dim, device=device)
        with torch.no_grad():
            for i, layer in enumerate(net):
                y = layer(x)
                rows.append({"part": part, "index": i, "layer": repr(layer),
                             "output": tuple(y.shape[1:]),
                             "params": sum(p.numel() for p in layer.parameters()),
                             "macs": _layer_macs(layer, x, y)})
                x = y
    return rows


def _input_shape(model: VAE) -> tuple[int, ...]:
    """The (C, H, W) a built-in model's decoder produces (= what its encoder takes)."""
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model.decode(torch.zeros(1, model.latent_dim))
        model.train(was)
    return tuple(out.shape[1:])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(architecture: str, *, latent_dim: int = 10,
                 image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> int:
    """Forward multiply-accumulates per example of ``architecture`` (encode + decode)."""
    model = build_model(architecture, latent_dim=latent_dim, image_shape=image_shape)
    return sum(r["macs"] for r in describe(model, image_shape))


def layer_table(architecture: str, *, latent_dim: int = 10,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> str:
    """Markdown table of the layers of ``architecture`` with parameter counts."""
    model = build_model(architecture, latent_dim=latent_dim, image_shape=image_shape)
    lines = [f"**{architecture}** on {'×'.join(map(str, image_shape))} "
             f"({count_parameters(model):,} parameters)", "",
             "| part | layer | output | params |", "|---|---|---|---:|"]
    for r in describe(model, image_shape):
        shape = "×".join(str(s) for s in r["output"])
        lines.append(f"| {r['part']} | `{r['layer']}` | {shape} | {r['params']:,} |")
    return "\n".join(lines)


def architecture_family(name: str) -> tuple[str, int | None]:
    """(family, depth) of an architecture for figures: ("mlp", 1), ("user", None), ..."""
    if is_user_architecture(name):
        return "user", None
    arch = get_architecture(name)
    return arch.family, arch.depth


__all__ = ["ARCHITECTURES", "Autoencoder", "IMAGE_SHAPE", "ModelSpec", "UserVAE", "VAE",
           "architecture_family", "build_model", "count_parameters", "describe",
           "forward_macs", "has_convolutions", "layer_table"]
