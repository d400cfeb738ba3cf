"""Splits: the 26 names, sizes, partitions, the parity rule, the CD box, determinism."""

import numpy as np
import pytest

from rdbench.io import InputError
from tetrominoes.factors import FACTOR_NAMES, factor_bins, sample_factors
from tetrominoes.splits import SPLIT_NAMES, cd_box, make_all_splits, make_split

N = 163_840
SIZES = [8192, 16384, 24576, 32768, 40960, 49152, 57344, 65536, 81920]
MIDPOINTS = {"angle": 168.75, "hue": 0.4375, "scale": 3.5, "x": 15.5, "y": 15.5}


@pytest.fixture(scope="module")
def factors():
    return sample_factors(0)


@pytest.fixture(scope="module")
def splits(factors):
    return make_all_splits(factors, seed=0)


def test_names():
    expected = {"random", "checkerboard", *(f"cv-{n}" for n in SIZES),
                *(f"cd-{n}" for n in SIZES[:-1])}
    # 2 + 9 cv + 8 cd = 19 names (DESIGN.md's "26" miscounts SPEC §2's list)
    assert len(SPLIT_NAMES) == 19 and set(SPLIT_NAMES) == expected


def test_arrays_are_sorted_unique_int64_and_disjoint(splits):
    for train, test in splits.values():
        for a in (train, test):
            assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
            assert a.min() >= 0 and a.max() < N
        assert np.intersect1d(train, test).size == 0


@pytest.mark.parametrize("name", ["random", "checkerboard", *(f"cv-{n}" for n in SIZES)])
def test_partitions_cover_every_row(splits, name):
    train, test = splits[name]
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(N))


def test_random_and_cv_sizes(splits):
    assert [len(a) for a in splits["random"]] == [81_920, 81_920]
    for n in SIZES:
        assert [len(a) for a in splits[f"cv-{n}"]] == [n, N - n]


def test_cv_is_nested_and_cv_81920_is_random(splits):
    for small, big in zip(SIZES, SIZES[1:], strict=False):
        assert np.isin(splits[f"cv-{small}"][0], splits[f"cv-{big}"][0]).all()
    np.testing.assert_array_equal(splits["cv-81920"][0], splits["random"][0])


def test_checkerboard_parity_rule(factors, splits):
    upper = np.column_stack([factors[f].to_numpy() >= MIDPOINTS[f] for f in FACTOR_NAMES])
    parity = upper.sum(axis=1) % 2
    train, test = splits["checkerboard"]
    assert (parity[train] == 0).all() and (parity[test] == 1).all()
    assert abs(len(train) - N / 2) < 0.01 * N  # scale's midpoint cuts a bin: ≈, not =


def test_checkerboard_test_samples_have_one_factor_neighbours(factors, splits):
    upper = np.column_stack([factors[f].to_numpy() >= MIDPOINTS[f] for f in FACTOR_NAMES])
    bins = factor_bins(factors)
    train, test = splits["checkerboard"]
    is_train = np.zeros(N, dtype=bool)
    is_train[train] = True
    for f in range(5):
        # a line along factor f: rows agreeing in every other factor's bin, except scale,
        # where they agree in the half (its midpoint 3.5 cuts its middle bin [3.2, 3.8))
        other = np.delete(np.where(np.arange(5) == 2, upper, bins), f, axis=1)
        key = other @ np.array([100**3, 100**2, 100, 1])
        lines, line = np.unique(key, return_inverse=True)
        has = np.zeros((len(lines), 2), dtype=bool)  # a training row with upper half 0 / 1
        np.logical_or.at(has, (line[is_train], upper[is_train, f].astype(int)), True)
        flipped = 1 - upper[test, f].astype(int)
        assert has[line[test], flipped].all(), FACTOR_NAMES[f]


@pytest.mark.parametrize("n", SIZES[:-1])
def test_constant_density_box(factors, splits, n):
    box = cd_box(n)
    widths = np.array([(hi - lo) for lo, hi in box.values()])
    full = np.array([337.5, 0.875, 3.0, 15.0, 15.0])
    assert np.prod(widths / full) == pytest.approx(n / 81_920)  # a fraction r of the volume
    for name, (lo, hi) in box.items():  # symmetric about the range's centre
        assert 0.5 * (lo + hi) == pytest.approx(MIDPOINTS[name])
    train, test = splits[f"cd-{n}"]
    rtrain, rtest = splits["random"]
    assert np.isin(train, rtrain).all() and np.isin(test, rtest).all()
    inside = np.ones(N, dtype=bool)
    for name, (lo, hi) in box.items():
        v = factors[name].to_numpy()
        inside &= (v >= lo) & (v < hi)
    np.testing.assert_array_equal(np.union1d(train, test), np.flatnonzero(inside))
    assert abs(len(train) - n) < 0.05 * n and abs(len(test) - n) < 0.05 * n


def test_cd_boxes_nest(splits):
    for small, big in zip(SIZES[:-2], SIZES[1:-1], strict=True):
        assert np.isin(splits[f"cd-{small}"][0], splits[f"cd-{big}"][0]).all()


def test_deterministic_per_seed(factors, splits):
    for name in ("random", "cv-8192", "cd-16384"):
        again = make_split(name, factors, seed=0)
        other = make_split(name, factors, seed=1)
        np.testing.assert_array_equal(again[0], splits[name][0])
        assert not np.array_equal(other[0], splits[name][0])


def test_unknown_split_lists_valid_names(factors):
    with pytest.raises(InputError, match="cv-16384"):
        make_split("cv-1000", factors)


def test_small_grid_scales_cv_sizes():
    small = sample_factors(0, bins=(4, 2, 2, 4, 4))  # 256 rows
    assert [len(a) for a in make_split("cv-16384", small)] == [26, 230]  # round(16384/640)
    assert [len(a) for a in make_split("random", small)] == [128, 128]
    train, test = make_split("cd-8192", small)
    assert 0 < len(train) + len(test) < 256
