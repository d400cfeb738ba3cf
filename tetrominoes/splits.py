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
scaled by N/163,840 and rounded; ``random`` and ``cd-<n>`` need no scaling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def check_split_name(name: str) -> str:
    """``name`` if it is a split name, else InputError listing the valid ones."""
    if name not in SPLIT_NAMES:
        raise InputError(f"unknown split {name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
    return name


def _permutation(n: int, seed: int) -> np.ndarray:
    # Its own stream: independent of the factor sample drawn from the same seed.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return rng.permutation(n)


def _pair(train_mask: np.ndarray, test_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(train_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64)


def _first(n_train: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train = the first ``n_train`` rows of the permutation, test = all the others."""
    mask = np.zeros(n, dtype=bool)
    mask[_permutation(n, seed)[:n_train]] = True
    return _pair(mask, ~mask)


def half_indices(factors: pd.DataFrame) -> np.ndarray:
    """int64 (N, 5): 1 where a factor lies in the upper half of its range, else 0."""
    return np.column_stack([
        (factors[name].to_numpy() >= 0.5 * sum(RANGES[name])).astype(np.int64)
        for name in FACTOR_NAMES
    ])


def checkerboard(factors: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Train ⇔ the sum of the five half-indices is even (a 2⁵ parity mask)."""
    even = half_indices(factors).sum(axis=1) % 2 == 0
    return _pair(even, ~even)


def cd_box(n_train: int) -> dict[str, tuple[float, float]]:
    """The constant-density box [lo', hi') per factor for ``cd-<n_train>``.

    Every range shrinks about its centre to a fraction r^(1/5) of its width, r = n/81,920,
    so the box holds a fraction r of the 5-D volume.
    """
    fraction = (n_train / _HALF) ** (1 / len(FACTOR_NAMES))
    box = {}
    for name in FACTOR_NAMES:
        lo, hi = RANGES[name]
        centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * fraction
        box[name] = (centre - half, centre + half)
    return box


def in_box(factors: pd.DataFrame, box: dict[str, tuple[float, float]]) -> np.ndarray:
    """bool (N,): the rows inside ``box`` (half-open, lo' ≤ v < hi' in every factor)."""
    inside = np.ones(len(factors), dtype=bool)
    for name, (lo, hi) in box.items():
        v = factors[name].to_numpy()
        inside &= (v >= lo) & (v < hi)
    return inside


def cv_train_size(n_train: int, n_rows: int) -> int:
    """Training-set size of ``cv-<n_train>`` on a dataset of ``n_rows`` (scaled if not 163,840)."""
    return int(round(n_train * n_rows / N_IMAGES))


def make_split(name: str, factors: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The split ``name`` of the dataset with these factors: sorted int64 (train, test) rows."""
    check_split_name(name)
    n = len(factors)
    if name == "random":
        return _first(n // 2, n, seed)
    if name == "checkerboard":
        return checkerboard(factors)
    kind, size = name.split("-")
    if kind == "cv":
        return _first(cv_train_size(int(size), n), n, seed)
    train, test = _first(n // 2, n, seed)
    inside = in_box(factors, cd_box(int(size)))
    return train[inside[train]], test[inside[test]]


def make_all_splits(
    factors: pd.DataFrame, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split of ``SPLIT_NAMES``: {name: (train, test)}."""
    return {name: make_split(name, factors, seed) for name in SPLIT_NAMES}
