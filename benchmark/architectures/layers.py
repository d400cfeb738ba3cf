"""Small layers the built-in architectures share: padding to a multiple of the stride
product and the matching crop of the decoder's output."""

from __future__ import annotations

from torch import Tensor, nn


def padding_to_multiple(side: int, multiple: int) -> tuple[int, int]:
    """(before, after) zeros that bring ``side`` up to a multiple of ``multiple``, split as
    evenly as possible (the odd one after)."""
    total = -side % multiple
    return total // 2, total - total // 2


class Crop(nn.Module):
    """The centre ``height × width`` of (..., H, W) feature maps: drops ``top``/``left`` rows and
    columns first (the inverse of ``nn.ZeroPad2d((left, ·, top, ·))``)."""

    def __init__(self, top: int, left: int, height: int, width: int):
        super().__init__()
        self.top, self.left, self.height, self.width = top, left, height, width

    def forward(self, x: Tensor) -> Tensor:
        return x[..., self.top:self.top + self.height, self.left:self.left + self.width]

    def extra_repr(self) -> str:
        return f"top={self.top}, left={self.left}, height={self.height}, width={self.width}"


def pad_and_crop(height: int, width: int, multiple: int) -> tuple[list[nn.Module],
                                                                  list[nn.Module], int, int]:
    """([ZeroPad2d] or [], [Crop] or [], padded height, padded width) for a network whose
    feature maps shrink by ``multiple``: nothing at all when the sides divide already."""
    top, bottom = padding_to_multiple(height, multiple)
    left, right = padding_to_multiple(width, multiple)
    if not (top or bottom or left or right):
        return [], [], height, width
    return ([nn.ZeroPad2d((left, right, top, bottom))], [Crop(top, left, height, width)],
            height + top + bottom, width + left + right)
