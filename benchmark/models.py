"""The four VAE architectures of the Tetrominoes study (SPEC §3): plain single-model modules.

Every model maps images x (B, 3, 32, 32) in [0, 1] to encoder outputs
(mu (B, d), params (B, P)) and latents z (B, d) to Bernoulli logits (B, 3, 32, 32).
``P = posterior_params`` is whatever the objective needs beyond the mean: d log-variances
for a mean-field Gaussian (the default), 0 for a deterministic encoder, or the Cholesky
entries of a block-diagonal covariance.

- ``mlp1`` / ``mlp3``: 1 or 3 hidden layers of 512 ReLU units, decoder mirrored.
- ``cnn1`` / ``cnn3``: 1 or 3 convolutions (64 channels, kernel 4, stride 2, padding 1:
  32 → 16 → 8 → 4), then a linear layer to the d + P encoder outputs; the decoder is a
  linear layer, then transposed convolutions (64 channels, the last to 3 channels).

Models only encode and decode: objectives and the trainer (which stacks many models into
one vectorised ensemble) live elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from rdbench.io import InputError

ARCHITECTURES = ("mlp1", "mlp3", "cnn1", "cnn3")
IMAGE_SHAPE = (3, 32, 32)
_HIDDEN = 512
_CHANNELS = 64
_DEPTH = {"mlp1": 1, "mlp3": 3, "cnn1": 1, "cnn3": 3}


class VAE(nn.Module):
    """Encoder + decoder; ``encoder`` outputs (B, d + P), ``decoder`` outputs logits."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, n_params: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.posterior_params = n_params

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, 32, 32) in [0, 1] -> (mu (B, d), params (B, P))."""
        h = self.encoder(x)  # (B, d + P)
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, d) -> Bernoulli logits (B, 3, 32, 32)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the reconstruction through the posterior mean (no sampling)."""
        mu, _ = self.encode(x)
        return self.decode(mu)


def _mlp(depth: int, n_out: int, latent_dim: int) -> tuple[nn.Sequential, nn.Sequential]:
    n_in = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    enc: list[nn.Module] = [nn.Flatten(), nn.Linear(n_in, _HIDDEN), nn.ReLU()]
    for _ in range(depth - 1):
        enc += [nn.Linear(_HIDDEN, _HIDDEN), nn.ReLU()]
    enc.append(nn.Linear(_HIDDEN, n_out))
    dec: list[nn.Module] = [nn.Linear(latent_dim, _HIDDEN), nn.ReLU()]
    for _ in range(depth - 1):
        dec += [nn.Linear(_HIDDEN, _HIDDEN), nn.ReLU()]
    dec += [nn.Linear(_HIDDEN, n_in), nn.Unflatten(1, IMAGE_SHAPE)]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def _cnn(depth: int, n_out: int, latent_dim: int) -> tuple[nn.Sequential, nn.Sequential]:
    side = IMAGE_SHAPE[1] >> depth  # 32 -> 16 (cnn1) or 4 (cnn3)
    flat = _CHANNELS * side * side
    enc: list[nn.Module] = []
    channels = IMAGE_SHAPE[0]
    for _ in range(depth):
        enc += [nn.Conv2d(channels, _CHANNELS, 4, stride=2, padding=1), nn.ReLU()]
        channels = _CHANNELS
    enc += [nn.Flatten(), nn.Linear(flat, n_out)]
    dec: list[nn.Module] = [
        nn.Linear(latent_dim, flat),
        nn.ReLU(),
        nn.Unflatten(1, (_CHANNELS, side, side)),
    ]
    for i in range(depth):
        last = i == depth - 1
        out = IMAGE_SHAPE[0] if last else _CHANNELS
        dec.append(nn.ConvTranspose2d(_CHANNELS, out, 4, stride=2, padding=1))
        if not last:
            dec.append(nn.ReLU())
    return nn.Sequential(*enc), nn.Sequential(*dec)


def build_model(
    architecture: str, *, latent_dim: int = 10, posterior_params: int | None = None
) -> VAE:
    """A freshly initialised (PyTorch default init, global RNG) model of ``architecture``.

    ``posterior_params``: encoder outputs beyond the mean; ``None`` means ``latent_dim``
    (a diagonal log-variance), 0 a deterministic encoder.
    """
    if architecture not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {architecture!r}; valid: {', '.join(ARCHITECTURES)}"
        )
    if latent_dim < 1:
        raise InputError(f"latent_dim must be >= 1, got {latent_dim}")
    n_params = latent_dim if posterior_params is None else int(posterior_params)
    if n_params < 0:
        raise InputError(f"posterior_params must be >= 0, got {n_params}")
    make = _mlp if architecture.startswith("mlp") else _cnn
    encoder, decoder = make(_DEPTH[architecture], latent_dim + n_params, latent_dim)
    return VAE(encoder, decoder, latent_dim, n_params)


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


def describe(model: VAE) -> list[dict]:
    """One row per layer: ``part, index, layer, output (shape of one example), params, macs``.

    ``macs`` are multiply-accumulates per example in the forward pass (a training step
    costs about 3 × 2 × macs FLOPs per example: forward + backward).
    """
    rows: list[dict] = []
    device = next(model.parameters()).device
    x = torch.zeros(1, *IMAGE_SHAPE, device=device)
    for part, net in (("encoder", model.encoder), ("decoder", model.decoder)):
        if part == "decoder":
            x = torch.zeros(1, model.latent_dim, device=device)
        with torch.no_grad():
            for i, layer in enumerate(net):
                y = layer(x)
                rows.append(
                    {
                        "part": part,
                        "index": i,
                        "layer": repr(layer),
                        "output": tuple(y.shape[1:]),
                        "params": sum(p.numel() for p in layer.parameters()),
                        "macs": _layer_macs(layer, x, y),
                    }
                )
                x = y
    return rows


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_macs(architecture: str, *, latent_dim: int = 10) -> int:
    """Forward multiply-accumulates per example of ``architecture`` (encode + decode)."""
    return sum(r["macs"] for r in describe(build_model(architecture, latent_dim=latent_dim)))


def layer_table(architecture: str, *, latent_dim: int = 10) -> str:
    """Markdown table of the layers of ``architecture`` with parameter counts."""
    model = build_model(architecture, latent_dim=latent_dim)
    lines = [
        f"**{architecture}** ({count_parameters(model):,} parameters)",
        "",
        "| part | layer | output | params |",
        "|---|---|---|---:|",
    ]
    for r in describe(model):
        shape = "×".join(str(s) for s in r["output"])
        lines.append(f"| {r['part']} | `{r['layer']}` | {shape} | {r['params']:,} |")
    return "\n".join(lines)
