"""Train/test splits of Tetrominoes (SPEC §2; Bozkurt et al. 2021, §4.1 and Fig. 2).

All splits of one seed derive from a single random permutation π of the rows:
- ``random``: train = π[:N/2], test = the rest (81,920 / 81,920);
- ``cv-<n>`` (constant volume): train = π[:n], test = all the rest. Nested by construction
  (cv-8192 ⊂ cv-16384 ⊂ … ⊂ cv-81920 = ``random``);
- ``checkerboard``: half-index h_f = [v_f ≥ midpoint of range f]; train ⇔ Σ_f h_f even;
- ``cd-<n>`` (constant density): r = n/81,920; the box of half-width ½(hi − lo)·r^(1/5) about
  every range's centre holds a fraction r of the data; train/test = the ``random``
  train/test rows inside it (sizes ≈ n / n, train density that of ``random``).

On a dataset with fewer rows than 163,840 (a coarser test grid) the cv training sizes are
scaled by N/163,840 and rounded; ``random`` and ``cd-<n>`` need no scaling. The rules
themselves are the generic ones of :mod:`imagesets.splits` (Tetrominoes' factors are all
continuous, with declared ranges); this module fixes the paper's names and sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from imagesets import splits as generic
from imagesets.format import FactorSpec
from rdbench.io import InputError
from tetrominoes.factors import FACTOR_NAMES, N_IMAGES, RANGES

CV_SIZES: tuple[int, ...] = (8192, 16384, 24576, 32768, 40960, 49152, 57344, 65536, 81920)
CD_SIZES: tuple[int, ...] = CV_SIZES[:-1]
SPLIT_NAMES: tuple[str, ...] = (
    "random", "checkerboard",
    *(f"cv-{n}" for n in CV_SIZES),
    *(f"cd-{n}" for n in CD_SIZES),
)
_HALF = N_IMAGES // 2  # 81,920: the reference training-set size
LABELS = {"angle": "angle (°)", "hue": "hue", "scale": "scale (px)", "x": "x (column)",
          "y": "y (row)"}
SPECS: tuple[FactorSpec, ...] = tuple(FactorSpec(name, False, RANGES[name], LABELS[name])
                                      for name in FACTOR_NAMES)


def check_split_name(name: str) -> str:
    """``name`` if it is a split name, else InputError listing the valid ones."""
    if name not in SPLIT_NAMES:
        raise InputError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
    return name


def half_indices(factors: pd.DataFrame) -> np.ndarray:
    """int64 (N, 5): 1 where a factor lies in the upper half of its range, else 0."""
    return generic.half_indices(factors, SPECS)


def checkerboard(factors: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Train ⇔ the sum of the five half-indices is even (a 2⁵ parity mask)."""
    return generic.checkerboard(factors, SPECS)


def cd_box(n_train: int) -> dict[str, tuple[float, float]]:
    """The constant-density box [lo', hi') per factor for ``cd-<n_train>``.

    Every range shrinks about its centre to a fraction r^(1/5) of its width, r = n/81,920,
    so the box holds a fraction r of the 5-D volume.
    """
    return generic.cd_box(n_train, _HALF, RANGES)


def cv_train_size(n_train: int, n_rows: int) -> int:
    """Training-set size of ``cv-<n_train>`` on a dataset of ``n_rows`` (scaled if not 163,840)."""
    return int(round(n_train * n_rows / N_IMAGES))


def make_split(name: str, factors: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The split ``name`` of the dataset with these factors: sorted int64 (train, test) rows."""
    check_split_name(name)
    n = len(factors)
    if name == "random":
        return generic.random_split(n, seed)
    if name == "checkerboard":
        return checkerboard(factors)
    kind, size = name.split("-")
    if kind == "cv":
        return generic.first_of_permutation(cv_train_size(int(size), n), n, seed)
    return generic.cd_split(cd_box(int(size)), factors, seed)


def split_info(name: str) -> dict:
    """The manifest entry's extra fields of split ``name`` (its rule, a cd split's box)."""
    if name.startswith("cd-"):
        return generic.box_info(cd_box(int(name.split("-")[1])))
    return {"rule": name.split("-")[0]}


def make_all_splits(
    factors: pd.DataFrame, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split of ``SPLIT_NAMES``: {name: (train, test)}."""
    return {name: make_split(name, factors, seed) for name in SPLIT_NAMES}
