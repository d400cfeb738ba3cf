"""``mlp1``, ``mlp3``: 1 or 3 hidden layers of 512 units in encoder and decoder (mirrored),
for any image shape (the image is flattened)."""

from __future__ import annotations

import math

from torch import nn

from benchmark.architectures import Architecture, activation_layer


def build_mlp(depth: int, image_shape: tuple[int, int, int], latent_dim: int, n_out: int,
              activation: str, hidden: int = 512) -> tuple[nn.Sequential, nn.Sequential]:
    n_in = math.prod(image_shape)
    enc: list[nn.Module] = [nn.Flatten(), nn.Linear(n_in, hidden), activation_layer(activation)]
    for _ in range(depth - 1):
        enc += [nn.Linear(hidden, hidden), activation_layer(activation)]
    enc.append(nn.Linear(hidden, n_out))
    dec: list[nn.Module] = [nn.Linear(latent_dim, hidden), activation_layer(activation)]
    for _ in range(depth - 1):
        dec += [nn.Linear(hidden, hidden), activation_layer(activation)]
    dec += [nn.Linear(hidden, n_in), nn.Unflatten(1, tuple(image_shape))]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def _mlp(depth: int) -> Architecture:
    return Architecture(
        name=f"mlp{depth}", family="mlp", depth=depth, order=10, options={"hidden": 512},
        build=lambda *args, **kw: build_mlp(depth, *args, **kw),
        summary=f"{depth} hidden layer(s) of 512 units in encoder and decoder, mirrored")


ARCHITECTURES = {"mlp1": _mlp(1), "mlp3": _mlp(3)}
