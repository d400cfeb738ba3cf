"""``kp-mnist``, ``kp-celeba``: the networks of Kumar & Poole (2020), App. D, with BatchNorm and
ELU (their table lists the GRAE model; a β-VAE's encoder has more outputs in its last layer).

kp-mnist (designed for 28×28×1)::

    encoder  Conv 64,4,1 → BN → ELU → Conv 128,4,2 → BN → ELU → Conv 256,4,2 → BN → ELU
             → Conv 512,4,2 → BN → ELU → Conv 512,4,1 → BN → ELU → Flatten → FC d(+P)
    decoder  FC 7×7×256 → BN → ELU → ConvT 512,4,1 → BN → ELU → ConvT 256,4,1 → BN → ELU
             → ConvT 128,4,2 → BN → ELU → ConvT 64,4,2 → ELU → Conv 1,4,1

kp-celeba (designed for 64×64×3): the same pattern with kernel 5, encoder channels 128, 256,
512, 1024, 1024 (strides 1, 2, 2, 2, 2), decoder FC 8×8×512 → ConvT 1024,5,1 → ConvT 512,5,2
→ ConvT 256,5,2 → ConvT 128,5,2 → Conv 3,5,1. (Their table says FC 16×16×512, which three
stride-2 layers would decode to 128×128, not 64×64; we start at 8×8.)

A layer followed by BatchNorm has no bias (BatchNorm removes it; with it, its gradient would
be pure rounding noise that Adam amplifies). Convolutions use TensorFlow's "same" padding
(outputs ⌈n/s⌉, zeros split with the odd one after), transposed ones its "same" cropping
(outputs n·s). The final sigmoid of their table is the likelihood's
(``benchmark.likelihoods``: μ = σ(u) for the Gaussian, p = σ(u) for the Bernoulli).

Other image sizes work too: the decoder starts at ⌈H/4⌉×⌈W/4⌉ (kp-celeba ⌈H/8⌉×⌈W/8⌉) and
its output is cropped to H×W. Option ``width`` scales every channel count
(e.g. 0.25 for a CPU-sized network). BatchNorm layers keep per-model statistics in a stacked
group (each model normalises its own minibatch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from benchmark.architectures import Architecture, activation_layer
from benchmark.architectures.layers import Crop


@dataclass(frozen=True)
class _Plan:
    kernel: int
    encoder: tuple[tuple[int, int], ...]  # (channels, stride) per convolution
    start: int  # decoder: channels of the FC's feature map
    upsample: int  # product of the decoder's strides
    decoder: tuple[tuple[int, int, bool], ...]  # (channels, stride, batch norm) per ConvT


_MNIST = _Plan(4, ((64, 1), (128, 2), (256, 2), (512, 2), (512, 1)), 256, 4,
               ((512, 1, True), (256, 1, True), (128, 2, True), (64, 2, False)))
_CELEBA = _Plan(5, ((128, 1), (256, 2), (512, 2), (1024, 2), (1024, 2)), 512, 8,
                ((1024, 1, True), (512, 2, True), (256, 2, True), (128, 2, False)))


def _same_conv(cin: int, cout: int, k: int, s: int, side: tuple[int, int], bias: bool = True
               ) -> tuple[list[nn.Module], tuple[int, int]]:
    """A convolution with "same" padding for an input of ``side``; returns (layers, new side)."""
    pads, out = [], []
    for n in side:
        o = -(-n // s)
        total = max((o - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
        out.append(o)
    (top, bottom), (left, right) = pads
    pad = [nn.ZeroPad2d((left, right, top, bottom))] if top or bottom or left or right else []
    return [*pad, nn.Conv2d(cin, cout, k, stride=s, bias=bias)], (out[0], out[1])


def _same_transpose(cin: int, cout: int, k: int, s: int, side: tuple[int, int],
                    bias: bool = True) -> tuple[list[nn.Module], tuple[int, int]]:
    """A transposed convolution with "same" cropping (output n·s); returns (layers, new side)."""
    before = (k - s) // 2
    out = (side[0] * s, side[1] * s)
    crop = [Crop(before, before, *out)] if k != s else []
    return [nn.ConvTranspose2d(cin, cout, k, stride=s, bias=bias), *crop], out


def build_kp(plan: _Plan, image_shape: tuple[int, int, int], latent_dim: int, n_out: int,
             activation: str, width: float = 1.0) -> tuple[nn.Sequential, nn.Sequential]:
    c, h, w = image_shape
    scaled = lambda ch: max(1, round(ch * width))  # noqa: E731
    enc: list[nn.Module] = []
    side, cin = (h, w), c
    for channels, stride in plan.encoder:
        layers, side = _same_conv(cin, scaled(channels), plan.kernel, stride, side, bias=False)
        enc += [*layers, nn.BatchNorm2d(scaled(channels)), activation_layer(activation)]
        cin = scaled(channels)
    enc += [nn.Flatten(), nn.Linear(cin * side[0] * side[1], n_out)]
    side = (-(-h // plan.upsample), -(-w // plan.upsample))
    start = (scaled(plan.start), *side)
    dec: list[nn.Module] = [nn.Linear(latent_dim, math.prod(start), bias=False),
                            nn.BatchNorm1d(math.prod(start)), activation_layer(activation),
                            nn.Unflatten(1, start)]
    cin = start[0]
    for channels, stride, norm in plan.decoder:
        layers, side = _same_transpose(cin, scaled(channels), plan.kernel, stride, side,
                                       bias=not norm)
        dec += [*layers, *([nn.BatchNorm2d(scaled(channels))] if norm else []),
                activation_layer(activation)]
        cin = scaled(channels)
    layers, side = _same_conv(cin, c, plan.kernel, 1, side)
    dec += layers
    if side != (h, w):
        dec.append(Crop(0, 0, h, w))
    return nn.Sequential(*enc), nn.Sequential(*dec)


def _kp(name: str, plan: _Plan, summary: str) -> Architecture:
    return Architecture(name=name, family="kp", depth=len(plan.encoder), activation="elu",
                        order=30, options={"width": 1.0}, summary=summary,
                        build=lambda *args, **kw: build_kp(plan, *args, **kw))


ARCHITECTURES = {
    "kp-mnist": _kp("kp-mnist", _MNIST, "Kumar & Poole's MNIST network: 5 convolutions "
                    "(64–512 channels, kernel 4) with BatchNorm and ELU, mirrored"),
    "kp-celeba": _kp("kp-celeba", _CELEBA, "Kumar & Poole's CelebA network: 5 convolutions "
                     "(128–1024 channels, kernel 5) with BatchNorm and ELU, mirrored"),
}
