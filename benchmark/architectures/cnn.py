"""``cnn1``, ``cnn3``: 1 or 3 convolutions (64 channels, kernel 4, stride 2, padding 1), then a
linear layer to the encoder outputs; the decoder mirrors it with a linear layer and transposed
convolutions (64 channels, the last to the image's channels).

Any image size: each convolution halves the sides, so a side that 2^depth does not divide is
first zero-padded (evenly, the odd pixel after) up to the next multiple of 2^depth, and the
decoder's output is cropped back to the image (e.g. 28×28 with cnn3: padded to 32×32, 4×4
at the bottleneck, output cropped from 32×32 to 28×28). Sides that divide get no padding or
crop layer at all, so 32×32 models are exactly SPEC §3's.
"""

from __future__ import annotations

from torch import nn

from benchmark.architectures import Architecture, activation_layer
from benchmark.architectures.layers import pad_and_crop


def build_cnn(depth: int, image_shape: tuple[int, int, int], latent_dim: int, n_out: int,
              activation: str, channels: int = 64) -> tuple[nn.Sequential, nn.Sequential]:
    c, h, w = image_shape
    pad, crop, hp, wp = pad_and_crop(h, w, 2 ** depth)
    bottleneck = (channels, hp >> depth, wp >> depth)
    flat = bottleneck[0] * bottleneck[1] * bottleneck[2]
    enc: list[nn.Module] = list(pad)
    in_channels = c
    for _ in range(depth):
        enc += [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
                activation_layer(activation)]
        in_channels = channels
    enc += [nn.Flatten(), nn.Linear(flat, n_out)]
    dec: list[nn.Module] = [nn.Linear(latent_dim, flat), activation_layer(activation),
                            nn.Unflatten(1, bottleneck)]
    for i in range(depth):
        last = i == depth - 1
        dec.append(nn.ConvTranspose2d(channels, c if last else channels, 4, stride=2, padding=1))
        if not last:
            dec.append(activation_layer(activation))
    return nn.Sequential(*enc), nn.Sequential(*dec, *crop)


def _cnn(depth: int) -> Architecture:
    return Architecture(
        name=f"cnn{depth}", family="cnn", depth=depth, order=20, options={"channels": 64},
        build=lambda *args, **kw: build_cnn(depth, *args, **kw),
        summary=f"{depth} conv layer(s) of 64 channels, kernel 4, stride 2; linear to the "
                "encoder outputs; mirrored with transposed convolutions")


ARCHITECTURES = {"cnn1": _cnn(1), "cnn3": _cnn(3)}
