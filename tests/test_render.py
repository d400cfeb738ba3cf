"""Rendering: geometric facts of the J piece, colour, clipping, agreement with other renderers."""

import numpy as np
import pandas as pd
import pytest

from rdbench.io import InputError
from tetrominoes.factors import FACTOR_NAMES
from tetrominoes.raster import coverage, hue_to_rgb, outline, render
from tetrominoes.reference import render_pillow


def _piece(angle=0.0, hue=0.0, scale=4.0, x=15.5, y=15.5) -> np.ndarray:
    return np.array([[angle, hue, scale, x, y]])


def _inside_j(X, Y, f):
    """Independent point-in-J test: back to block units, then the two rectangles of SPEC §2."""
    angle, _, scale, x, y = f
    th = np.deg2rad(angle)
    dx, dy = (X - x - 0.5) / scale, (Y - y - 0.5) / scale
    u = dx * np.cos(th) - dy * np.sin(th)  # inverse of the on-screen CCW rotation
    v = dx * np.sin(th) + dy * np.cos(th)
    column = (u >= 0) & (u < 1) & (v >= -1.5) & (v < 1.5)
    foot = (u >= -1) & (u < 0) & (v >= 0.5) & (v < 1.5)
    return column | foot


def _supersampled(f, k=32):
    """Coverage by point sampling k × k sub-pixel centres per pixel: (32, 32)."""
    s = (np.arange(32 * k) + 0.5) / k
    X, Y = np.meshgrid(s, s)  # X = column, Y = row
    return _inside_j(X, Y, f).reshape(32, k, 32, k).mean(axis=(1, 3))


def test_upright_j_covers_the_expected_blocks():
    # scale 4 about (16, 16): box columns 12..20, rows 10..22; right column full, foot bottom-left
    expected = np.zeros((32, 32))
    expected[10:22, 16:20] = 1.0
    expected[18:22, 12:16] = 1.0
    np.testing.assert_allclose(coverage(_piece())[0], expected, atol=1e-12)


def test_half_pixel_offset_gives_half_covered_edge_pixels():
    c = coverage(_piece(x=15.0, y=15.0))[0]  # centre (15.5, 15.5): edges on pixel middles
    np.testing.assert_allclose(c[15, 15:20], [0.5, 1, 1, 1, 0.5], atol=1e-12)
    np.testing.assert_allclose(c[9, 15:20], [0.25, 0.5, 0.5, 0.5, 0.25], atol=1e-12)
    assert c.sum() == pytest.approx(64.0)


def test_total_coverage_is_four_blocks():
    rng = np.random.default_rng(0)
    n = 200
    f = np.column_stack([rng.uniform(0, 360, n), rng.uniform(0, 0.875, n),
                         rng.uniform(2, 5, n), rng.uniform(9.5, 21.5, n),
                         rng.uniform(9.5, 21.5, n)])
    pts = outline(f)
    assert pts.min() > 0 and pts.max() < 32  # fully inside the image
    c = coverage(f)
    np.testing.assert_allclose(c.sum(axis=(1, 2)), 4 * f[:, 2] ** 2, rtol=1e-10)
    assert c.min() >= 0 and c.max() <= 1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_is_counter_clockwise_on_screen(k):
    # centred on the image centre (16, 16), a 90k° turn is np.rot90 (CCW as displayed)
    base = coverage(_piece(scale=3.7))[0]
    turned = coverage(_piece(angle=90.0 * k, scale=3.7))[0]
    np.testing.assert_allclose(turned, np.rot90(base, k), atol=1e-9)
    # uint8 may differ by one where 255·c lands on a rounding tie (cos 180° ≠ −1 in floats)
    diff = render(_piece(angle=90.0 * k, scale=3.7, hue=0.4))[0].astype(int)
    diff -= np.rot90(render(_piece(scale=3.7, hue=0.4))[0], k, axes=(0, 1))
    assert np.abs(diff).max() <= 1


def test_small_rotation_turns_the_top_to_the_left():
    # CCW on screen: the top of the upright J (its right column) moves left
    c0, c10 = coverage(_piece())[0], coverage(_piece(angle=10.0))[0]
    cols = np.arange(32)
    top0 = (c0[10:13] * cols).sum() / c0[10:13].sum()
    top10 = (c10[10:13] * cols).sum() / c10[10:13].sum()
    assert top10 < top0


def test_x_moves_columns_and_y_moves_rows():
    c = coverage(_piece())[0]
    np.testing.assert_allclose(coverage(_piece(x=18.5))[0], np.roll(c, 3, axis=1), atol=1e-12)
    np.testing.assert_allclose(coverage(_piece(y=13.5))[0], np.roll(c, -2, axis=0), atol=1e-12)


def test_pieces_leaving_the_image_are_clipped():
    f = _piece(angle=33.0, scale=4.5)
    c = coverage(f)[0]
    shifted = f.copy()
    shifted[0, 3] -= 20  # 20 columns to the left: only columns 20.. of c remain, at 0..
    np.testing.assert_allclose(coverage(shifted)[0][:, :12], c[:, 20:], atol=1e-12)
    shifted[0, 4] += 25  # and 25 rows down
    np.testing.assert_allclose(coverage(shifted)[0][25:, :12], c[:7, 20:], atol=1e-12)
    assert coverage(_piece(x=-40.0))[0].sum() == 0


def test_exact_coverage_matches_independent_supersampling():
    rng = np.random.default_rng(1)
    for _ in range(4):
        f = np.array([rng.uniform(0, 360), 0.0, rng.uniform(2, 5),
                      rng.uniform(8, 23), rng.uniform(8, 23)])
        diff = np.abs(coverage(f)[0] - _supersampled(f))
        assert diff.max() < 0.1 and diff.mean() < 2e-3


def test_hue_wheel():
    np.testing.assert_allclose(hue_to_rgb(np.array([0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6])),
                               [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1],
                                [1, 0, 1]], atol=1e-12)


def test_hue_zero_is_pure_red_and_full_coverage_is_255():
    img = render(_piece(hue=0.0))[0]
    assert img[..., 1].max() == 0 and img[..., 2].max() == 0
    assert img[15, 17, 0] == 255 and img[0, 0, 0] == 0
    green = render(_piece(hue=1 / 3))[0]
    assert green[..., 0].max() == 0 and green[..., 2].max() == 0 and green[..., 1].max() == 255


def test_value_is_rounded_coverage():
    f = _piece(angle=17.0, hue=0.0, scale=3.3, x=14.2, y=16.9)
    np.testing.assert_array_equal(render(f)[0, ..., 0], np.rint(255 * coverage(f)[0]))


def test_dataframe_and_array_inputs_agree():
    f = np.array([[10.0, 0.1, 2.5, 12.0, 14.0], [200.0, 0.7, 4.5, 20.0, 9.0]])
    df = pd.DataFrame(f, columns=list(FACTOR_NAMES))[list(reversed(FACTOR_NAMES))]
    np.testing.assert_array_equal(render(df), render(f))
    assert render(f).shape == (2, 32, 32, 3) and render(f).dtype == np.uint8
    with pytest.raises(InputError):
        render(np.zeros((3, 4)))


def test_pillow_reference_agrees():
    rng = np.random.default_rng(2)
    n = 40
    f = np.column_stack([rng.uniform(0, 337.5, n), rng.uniform(0, 0.875, n),
                         rng.uniform(2, 5, n), rng.uniform(8, 23, n), rng.uniform(8, 23, n)])
    diff = np.abs(render(f).astype(int) - render_pillow(f))
    assert diff.mean() < 0.5  # out of 255
