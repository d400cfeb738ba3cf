"""``ImageDataset``: a ``torch.utils.data.Dataset`` over one side of a split of any dataset."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from imagesets.data import ImageSet, load
from imagesets.tensor import model_input
from rdbench.io import InputError

SUBSETS = ("train", "test", "all")


class ImageDataset(Dataset):
    """Items ``(image, factors)``: float32 (C, H, W) = uint8/255 in [0, 1], float32 (F,).

    ``data``: a loaded dataset or its directory; ``split``: a split name, or None for every
    row; ``subset``: ``"train"``, ``"test"`` or ``"all"`` (train and test of the split).
    ``.indices`` holds the dataset rows, in order.
    """

    def __init__(self, data: ImageSet | str | os.PathLike, split: str | None = "random",
                 subset: str = "train"):
        self.data = data if isinstance(data, ImageSet) else load(data)
        if subset not in SUBSETS:
            raise InputError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")
        if split is None:
            self.indices = np.arange(len(self.data), dtype=np.int64)
        else:
            train, test = self.data.split(split)
            parts = {"train": [train], "test": [test], "all": [train, test]}[subset]
            self.indices = np.sort(np.concatenate(parts))
        self._factors = self.data.factors.to_numpy(np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        return model_input(self.data.images[row]), torch.from_numpy(self._factors[row].copy())
