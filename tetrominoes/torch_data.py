"""``TetrominoesDataset``: the generic :class:`imagesets.ImageDataset` (items ``(image,
factors)``: float32 (3, 32, 32) = uint8/255 in [0, 1], float32 (5,))."""

from imagesets.torch_data import SUBSETS, ImageDataset

TetrominoesDataset = ImageDataset

__all__ = ["SUBSETS", "TetrominoesDataset"]
