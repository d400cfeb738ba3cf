"""The five generative factors of Tetrominoes and their stratified sample (SPEC §2).

Every factor range ``[lo, hi)`` is cut into equal bins; the dataset holds exactly one
sample drawn uniformly inside every cell of the 5-D grid, 16 × 8 × 5 × 16 × 16 = 163,840
rows, in grid (C) order: row = ((((a·8 + h)·5 + s)·16 + x)·16 + y).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from rdbench.io import InputError

FACTOR_NAMES: tuple[str, ...] = ("angle", "hue", "scale", "x", "y")
RANGES: dict[str, tuple[float, float]] = {
    "angle": (0.0, 337.5),  # degrees, counter-clockwise on screen
    "hue": (0.0, 0.875),  # HSV hue; stops short of wrapping back to red
    "scale": (2.0, 5.0),  # edge of one block, pixels
    "x": (8.0, 23.0),  # column of the piece centre
    "y": (8.0, 23.0),  # row of the piece centre
}
BINS: tuple[int, ...] = (16, 8, 5, 16, 16)
N_IMAGES: int = int(np.prod(BINS))  # 163,840


def _check_bins(bins: Sequence[int]) -> tuple[int, ...]:
    bins = tuple(int(b) for b in bins)
    if len(bins) != len(FACTOR_NAMES) or min(bins) < 1:
        raise InputError(f"bins must be {len(FACTOR_NAMES)} positive integers, got {bins}")
    return bins


def sample_factors(seed: int = 0, bins: Sequence[int] = BINS) -> pd.DataFrame:
    """One uniform sample inside every cell of the factor grid, in grid order.

    value = lo + (bin + u)·(hi − lo)/bins, u ~ U[0, 1) from ``np.random.default_rng(seed)``;
    returns a DataFrame of shape (prod(bins), 5), columns ``FACTOR_NAMES``, float64.
    ``bins`` other than the default gives a coarser grid over the same ranges (small test
    datasets); everything downstream works on it unchanged.
    """
    bins = _check_bins(bins)
    rng = np.random.default_rng(seed)
    cells = np.indices(bins).reshape(len(bins), -1).T  # (N, 5) bin index per factor
    u = rng.random(cells.shape)  # (N, 5) in [0, 1)
    columns = {}
    for f, name in enumerate(FACTOR_NAMES):
        lo, hi = RANGES[name]
        width = (hi - lo) / bins[f]
        value = lo + (cells[:, f] + u[:, f]) * width
        # lo + (b + u)·w can round up onto the cell's upper edge; keep it inside the cell.
        upper = lo + (cells[:, f] + 1) * width
        columns[name] = np.minimum(value, np.nextafter(upper, -np.inf))
    return pd.DataFrame(columns)


def factor_bins(factors: pd.DataFrame, bins: Sequence[int] = BINS) -> np.ndarray:
    """Grid cell of every sample: int64 (N, 5), bin index per factor (floor((v − lo)/w))."""
    bins = _check_bins(bins)
    out = np.empty((len(factors), len(FACTOR_NAMES)), dtype=np.int64)
    for f, name in enumerate(FACTOR_NAMES):
        lo, hi = RANGES[name]
        b = np.floor((factors[name].to_numpy() - lo) / ((hi - lo) / bins[f]))
        out[:, f] = np.clip(b, 0, bins[f] - 1)
    return out


def as_factor_array(factors: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Factors as a float64 (n, 5) array in ``FACTOR_NAMES`` order (DataFrame or array in)."""
    if isinstance(factors, pd.DataFrame):
        missing = [c for c in FACTOR_NAMES if c not in factors.columns]
        if missing:
            raise InputError(f"factor columns missing: {', '.join(missing)}")
        return factors.loc[:, list(FACTOR_NAMES)].to_numpy(dtype=np.float64)
    array = np.asarray(factors, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != len(FACTOR_NAMES):
        raise InputError(f"factors must have shape (n, 5) {FACTOR_NAMES}, got {array.shape}")
    return array
