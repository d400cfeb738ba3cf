"""``TetrominoesDataset``: a ``torch.utils.data.Dataset`` over one side of a split."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from rdbench.io import InputError
from tetrominoes.data import Tetrominoes, load
from tetrominoes.factors import FACTOR_NAMES

SUBSETS = ("train", "test", "all")


class TetrominoesDataset(Dataset):
    """Items ``(image, factors)``: float32 (3, 32, 32) = uint8/255 in [0, 1], float32 (5,).

    ``data``: a loaded dataset or its directory; ``split``: a split name, or None for every
    row; ``subset``: ``"train"``, ``"test"`` or ``"all"`` (train and test of the split).
    ``.indices`` holds the dataset rows, in order.
    """

    def __init__(self, data: Tetrominoes | str | os.PathLike, split: str | None = "random",
                 subset: str = "train"):
        self.data = data if isinstance(data, Tetrominoes) else load(data)
        if subset not in SUBSETS:
            raise InputError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")
        if split is None:
            self.indices = np.arange(len(self.data), dtype=np.int64)
        else:
            train, test = self.data.split(split)
            parts = {"train": [train], "test": [test], "all": [train, test]}[subset]
            self.indices = np.sort(np.concatenate(parts))
        self._factors = self.data.factors.loc[:, list(FACTOR_NAMES)].to_numpy(np.float32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        image = torch.from_numpy(np.array(self.data.images[row]))  # (32, 32, 3) uint8
        image = image.permute(2, 0, 1).to(torch.float32) / 255.0  # (3, 32, 32)
        return image, torch.tensor(self._factors[row])
