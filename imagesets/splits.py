"""Train/test split rules for any dataset (SPEC §2 generalised in §9), and their checks.

Every split is a pair of sorted, duplicate-free, disjoint int64 row arrays. The rules:

- ``random``: a seeded permutation π of the N rows; train = π[:⌊N/2⌋], test = the rest.
- ``cv-<n>`` (constant volume): train = π[:n], test = all the others (nested in n).
- ``checkerboard``: for every non-categorical factor f with range [lo_f, hi_f] (declared in
  the manifest, else the observed [min, max]) the half-index h_f = [v_f ≥ (lo_f + hi_f)/2];
  train ⇔ Σ_f h_f is even. Categorical factors take no part. For a discrete factor whose k
  values are equally spaced, the lower half holds the ⌊k/2⌋ smallest values (the middle
  value of an odd k goes to the upper half).
- ``cd-<n>`` (constant density): r = n / n_half (n_half = ⌊N/2⌋, the size of ``random``'s
  train set); every non-categorical factor range shrinks about its centre to a fraction
  r^(1/k) of its width (k = the number of such factors); train / test = the ``random``
  train / test rows inside the box [lo', hi') of every factor.
- ``standard``: the publisher's own train/test partition (an importer supplies it).
- user splits: a pandas query on the factors (:func:`query_split`) or explicit row arrays.

All random splits of one dataset derive from the one permutation π of its seed, so cv-n
training sets are nested and cv-⌊N/2⌋ equals ``random``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from rdbench.io import InputError

SplitRows = tuple[np.ndarray, np.ndarray]


def permutation(n: int, seed: int) -> np.ndarray:
    """The dataset's one random order of its rows (its own stream of ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return rng.permutation(n)


def _pair(train_mask: np.ndarray, test_mask: np.ndarray) -> SplitRows:
    return np.flatnonzero(train_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64)


def first_of_permutation(n_train: int, n: int, seed: int) -> SplitRows:
    """Train = the first ``n_train`` rows of the permutation, test = all the others."""
    mask = np.zeros(n, dtype=bool)
    mask[permutation(n, seed)[:n_train]] = True
    return _pair(mask, ~mask)


def random_split(n: int, seed: int) -> SplitRows:
    return first_of_permutation(n // 2, n, seed)


def ordered_factors(specs: Sequence[FactorSpec]) -> list[FactorSpec]:
    """The factors that splits halve and shrink: the non-categorical ones."""
    return [s for s in specs if not s.categorical]


def factor_range(spec: FactorSpec, factors: pd.DataFrame) -> tuple[float, float]:
    """The declared range of a factor, else the observed [min, max] of its column."""
    if spec.range is not None:
        return float(spec.range[0]), float(spec.range[1])
    values = factors[spec.name].to_numpy(dtype=np.float64)
    return float(values.min()), float(values.max())


def half_indices(factors: pd.DataFrame, specs: Sequence[FactorSpec]) -> np.ndarray:
    """int64 (N, k): 1 where a non-categorical factor lies in the upper half of its range."""
    columns = []
    for spec in ordered_factors(specs):
        lo, hi = factor_range(spec, factors)
        columns.append((factors[spec.name].to_numpy() >= 0.5 * (lo + hi)).astype(np.int64))
    return np.column_stack(columns) if columns else np.zeros((len(factors), 0), np.int64)


def checkerboard(factors: pd.DataFrame, specs: Sequence[FactorSpec]) -> SplitRows:
    """Train ⇔ the sum of the half-indices is even (a 2^k parity mask)."""
    even = half_indices(factors, specs).sum(axis=1) % 2 == 0
    return _pair(even, ~even)


def factor_ranges(factors: pd.DataFrame, specs: Sequence[FactorSpec]
                  ) -> dict[str, tuple[float, float]]:
    """{name: (lo, hi)} of the non-categorical factors (see :func:`factor_range`)."""
    return {spec.name: factor_range(spec, factors) for spec in ordered_factors(specs)}


def cd_box(n_train: int, n_half: int, ranges: dict[str, tuple[float, float]]
           ) -> dict[str, tuple[float, float]]:
    """The constant-density box [lo', hi') per factor of ``ranges`` for ``cd-<n_train>``:
    every range shrinks about its centre to a fraction (n_train / n_half)^(1/k) of its width."""
    fraction = (n_train / n_half) ** (1 / len(ranges))
    box = {}
    for name, (lo, hi) in ranges.items():
        centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * fraction
        box[name] = (centre - half, centre + half)
    return box


def in_box(factors: pd.DataFrame, box: dict[str, tuple[float, float]]) -> np.ndarray:
    """bool (N,): the rows inside ``box`` (lo' ≤ v < hi' in every factor of the box)."""
    inside = np.ones(len(factors), dtype=bool)
    for name, (lo, hi) in box.items():
        v = factors[name].to_numpy()
        inside &= (v >= lo) & (v < hi)
    return inside


def cd_split(box: dict[str, tuple[float, float]], factors: pd.DataFrame, seed: int) -> SplitRows:
    """``random``'s train and test rows inside ``box``."""
    train, test = random_split(len(factors), seed)
    inside = in_box(factors, box)
    return train[inside[train]], test[inside[test]]


def power_sizes(n: int, start: int = 1024) -> list[int]:
    """1,024, 2,048, 4,096, … up to ⌊n/2⌋: the cv-N sizes an importer writes."""
    sizes, size = [], start
    while size <= n // 2:
        sizes.append(size)
        size *= 2
    return sizes


def default_splits(factors: pd.DataFrame, specs: Sequence[FactorSpec], n: int, seed: int,
                   standard: SplitRows | None = None) -> dict[str, tuple[np.ndarray, np.ndarray,
                                                                       dict[str, Any]]]:
    """The splits an imported dataset gets: {name: (train, test, manifest info)}.

    ``standard`` (the publisher's partition) when given; ``random``; ``cv-N`` for the
    :func:`power_sizes`; and, when some factor is not categorical, ``checkerboard`` and
    ``cd-N`` for the same N below ⌊n/2⌋.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    if standard is not None:
        out["standard"] = (*standard, {"rule": "standard"})
    out["random"] = (*random_split(n, seed), {"rule": "random"})
    for size in power_sizes(n):
        out[f"cv-{size}"] = (*first_of_permutation(size, n, seed), {"rule": "cv"})
    if ordered_factors(specs):
        out["checkerboard"] = (*checkerboard(factors, specs), {"rule": "checkerboard"})
        for size in power_sizes(n):
            if size < n // 2:
                box = cd_box(size, n // 2, factor_ranges(factors, specs))
                train, test = cd_split(box, factors, seed)
                if train.size and test.size:  # a box between a discrete factor's values
                    out[f"cd-{size}"] = (train, test, box_info(box))
    return out


def box_info(box: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """The manifest entry's extra fields of a cd split (its box, for the split picture)."""
    return {"rule": "cd", "box": {k: [float(lo), float(hi)] for k, (lo, hi) in box.items()}}


def query_split(factors: pd.DataFrame, train_query: str, test_query: str | None = None
                ) -> SplitRows:
    """Rows where ``train_query`` holds (a pandas query on the factor columns) and, as test,
    rows where ``test_query`` holds (default: every other row). One-line InputError for a
    query pandas cannot evaluate or that does not give one boolean per row."""
    train = _mask(factors, train_query, "--train")
    test = ~train if test_query is None else _mask(factors, test_query, "--test")
    return _pair(train, test)


def _mask(factors: pd.DataFrame, query: str, flag: str) -> np.ndarray:
    if factors.shape[1] == 0:
        raise InputError("this dataset has no factors to query; use --from FILE.npz")
    try:
        result = factors.eval(query, engine="python")
    except Exception as e:  # pandas raises many types for a bad expression
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"{flag} query {query!r} cannot be evaluated ({first}); factor "
                         f"columns: {', '.join(factors.columns)}") from None
    values = np.asarray(result)
    if values.shape != (len(factors),) or values.dtype != bool:
        raise InputError(f"{flag} query {query!r} does not give one true/false per image "
                         "(use a comparison, e.g. \"shape == 2 and scale > 0.8\")")
    return values


def check_split(train: np.ndarray, test: np.ndarray, n: int, what: str) -> None:
    """One-line InputError unless train and test are 1-D int64, sorted without duplicates,
    within [0, n), disjoint and non-empty."""
    for side, rows in (("train", train), ("test", test)):
        if rows.dtype != np.int64 or rows.ndim != 1:
            raise InputError(f"{what}: {side} must be a 1-D int64 array, got "
                             f"{rows.dtype} {rows.shape}")
        if rows.size == 0:
            raise InputError(f"{what}: the {side} set is empty")
        if rows.size > 1 and not (np.diff(rows) > 0).all():
            raise InputError(f"{what}: {side} rows are not sorted without duplicates")
        if rows[0] < 0 or rows[-1] >= n:
            raise InputError(f"{what}: {side} holds rows outside [0, {n})")
    if np.intersect1d(train, test, assume_unique=True).size:
        raise InputError(f"{what}: train and test share rows")


def validation_rows(train: np.ndarray, split: str, validation: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(rows a run trains on, its validation rows) of a split's training rows with
    ``validation`` images held out: seeded by the split's name and ``validation``, so the same
    for every run of the split, for training and for evaluation; (train, no rows) without."""
    if not validation:
        return train, train[:0]
    return hold_out(train, validation, ("validation", split, validation))


def hold_out(train: np.ndarray, n: int, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(rows trained on, validation rows): ``n`` rows of ``train`` chosen by a generator
    seeded with ``key`` (e.g. the split's name), both sorted; the same for every caller."""
    from rdbench.seeding import derive_seed

    if not 0 <= n < len(train):
        raise InputError(f"cannot hold out {n} of {len(train)} training images")
    held = np.zeros(len(train), dtype=bool)
    held[np.random.default_rng(derive_seed(*key)).choice(len(train), n, replace=False)] = True
    return train[~held], train[held]
