"""Exact, vectorised rendering of J tetrominoes (SPEC §2).

Geometry (screen coordinates: X = column to the right, Y = row downward; pixel (i, j)
covers [j, j+1) × [i, i+1)). In block units about the centre of the 2-wide, 3-tall bounding
box, the upright J is the right column u ∈ [0, 1], v ∈ [−1.5, 1.5] plus the bottom-left
block u ∈ [−1, 0], v ∈ [0.5, 1.5] (v grows downward). A piece is scaled by ``scale`` px per
block, rotated counter-clockwise *on screen* by ``angle``, and centred at (x + 0.5, y + 0.5):

    X = x + 0.5 + scale·( u·cos θ + v·sin θ)
    Y = y + 0.5 + scale·(−u·sin θ + v·cos θ)

Pixel value = exact area coverage c ∈ [0, 1], computed by signed-area accumulation (the
scanline method of font rasterisers): every outline edge is cut at the integer grid lines
into pieces that each lie in one cell (i, j); a piece with vertical extent dy and mean
column x̄ adds dy·(j + 1 − x̄) to cell (i, j) and dy·(x̄ − j) to cell (i, j + 1); the prefix
sum along each row then equals the signed area of the polygon in every cell (Green's
theorem), exactly, with clipping to the image for free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tetrominoes.factors import as_factor_array

SIZE = 32
CHUNK = 2048

# The J outline (u, v) in block units, split into the 10 unit edges of its 6 sides.
_CORNERS = np.array([(0, -1.5), (1, -1.5), (1, 1.5), (-1, 1.5), (-1, 0.5), (0, 0.5)])


def _unit_edges() -> tuple[np.ndarray, np.ndarray]:
    starts, ends = [], []
    for a, b in zip(_CORNERS, np.roll(_CORNERS, -1, axis=0), strict=True):
        steps = int(round(np.abs(b - a).sum()))
        for k in range(steps):
            starts.append(a + (b - a) * k / steps)
            ends.append(a + (b - a) * (k + 1) / steps)
    return np.array(starts), np.array(ends)  # (10, 2) each


_EDGE_START, _EDGE_END = _unit_edges()


def outline(factors: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Image coordinates of the J outline's 10 unit edges: float64 (n, 10, 2 ends, 2 = X, Y)."""
    f = as_factor_array(factors)  # (n, 5)
    theta = np.deg2rad(f[:, 0])[:, None, None]  # (n, 1, 1)
    scale = f[:, 2][:, None, None]
    ends = np.stack([_EDGE_START, _EDGE_END], axis=1)[None]  # (1, 10, 2, 2)
    u, v = ends[..., 0], ends[..., 1]  # (1, 10, 2)
    X = f[:, 3][:, None, None] + 0.5 + scale * (u * np.cos(theta) + v * np.sin(theta))
    Y = f[:, 4][:, None, None] + 0.5 + scale * (-u * np.sin(theta) + v * np.cos(theta))
    return np.stack([X, Y], axis=-1)  # (n, 10, 2, 2)


def _crossings(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Parameters t ∈ (0, 1) where a + t(b − a) crosses an integer; 1 where there are fewer.

    a, b: (n, E); returns (n, E, k), k ≥ the number of integers strictly inside any (a, b).
    """
    lo = np.minimum(a, b)
    grid = np.floor(lo)[..., None] + np.arange(1, k + 1)  # (n, E, k) candidate integers
    d = (b - a)[..., None]
    valid = grid < np.maximum(a, b)[..., None]
    t = (grid - a[..., None]) / np.where(valid, d, 1.0)
    return np.where(valid, t, 1.0)


def _accumulate(edges: np.ndarray) -> np.ndarray:
    """Signed-area deltas per cell, summed along rows to coverage: float64 (n, 32, 32)."""
    n = edges.shape[0]
    x0, y0 = edges[:, :, 0, 0], edges[:, :, 0, 1]  # (n, E)
    x1, y1 = edges[:, :, 1, 0], edges[:, :, 1, 1]
    span = max(np.abs(x1 - x0).max(initial=0.0), np.abs(y1 - y0).max(initial=0.0))
    k = max(1, int(np.ceil(span)))  # an open interval of length L holds ≤ ceil(L) integers
    t = np.concatenate(
        [np.zeros(x0.shape + (1,)), _crossings(x0, x1, k), _crossings(y0, y1, k),
         np.ones(x0.shape + (1,))], axis=-1)
    t.sort(axis=-1)  # (n, E, 2k + 2)
    X = x0[..., None] + t * (x1 - x0)[..., None]
    Y = y0[..., None] + t * (y1 - y0)[..., None]
    xm = 0.5 * (X[..., 1:] + X[..., :-1])  # (n, E, 2k + 1) piece midpoints
    ym = 0.5 * (Y[..., 1:] + Y[..., :-1])
    dy = Y[..., 1:] - Y[..., :-1]
    col = np.floor(xm)
    left = dy * (col + 1 - xm)  # area right of the piece inside its own cell
    # Rows outside the image go to dump rows 0 and SIZE + 1; columns left of the image add
    # their whole dy to column 0, columns right of it go to dump column SIZE.
    row = np.clip(np.floor(ym), -1, SIZE).astype(np.int64) + 1
    c0 = np.clip(col, 0, SIZE).astype(np.int64)
    c1 = np.clip(col + 1, 0, SIZE).astype(np.int64)
    base = (np.arange(n)[:, None, None] * (SIZE + 2) + row) * (SIZE + 1)
    size = n * (SIZE + 2) * (SIZE + 1)
    acc = np.bincount((base + c0).ravel(), left.ravel(), minlength=size)
    acc += np.bincount((base + c1).ravel(), (dy - left).ravel(), minlength=size)
    acc = acc.reshape(n, SIZE + 2, SIZE + 1)[:, 1:SIZE + 1, :SIZE]
    return np.cumsum(acc, axis=2)


def coverage(factors: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Exact area of every pixel covered by the piece: float64 (n, 32, 32) in [0, 1].

    A piece fully inside the image has total coverage 4·scale² (four blocks).
    """
    edges = outline(factors)  # (n, 10, 2, 2)
    out = np.empty((edges.shape[0], SIZE, SIZE))
    for s in range(0, edges.shape[0], CHUNK):
        # The outline's orientation fixes the sign; abs() makes it irrelevant.
        np.abs(_accumulate(edges[s:s + CHUNK]), out=out[s:s + CHUNK])
    return np.minimum(out, 1.0, out=out)  # float rounding can overshoot 1 by an ulp


def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """hsv_to_rgb(hue, 1, 1) for an array of hues: float64 (n, 3).

    With saturation 1 the colour is linear in the value, so hsv_to_rgb(h, 1, c) = c·rgb(h).
    The standard piecewise-linear hue wheel (red at 0, green at 1/3, blue at 2/3):
    R = clip(|6h − 3| − 1), G = clip(2 − |6h − 2|), B = clip(2 − |6h − 4|), clip to [0, 1].
    """
    h = np.mod(np.asarray(hue, dtype=np.float64), 1.0)[:, None] * 6.0  # (n, 1)
    r = np.abs(h - 3.0) - 1.0
    g = 2.0 - np.abs(h - 2.0)
    b = 2.0 - np.abs(h - 4.0)
    return np.clip(np.concatenate([r, g, b], axis=1), 0.0, 1.0)


def colorize(cover: np.ndarray, hue: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (n, 32, 32, 3) = round(255 · c · rgb(hue)) for coverage c (n, 32, 32)."""
    rgb = hue_to_rgb(hue)  # (n, 3)
    value = cover * 255.0
    if out is None:
        out = np.empty(cover.shape + (3,), dtype=np.uint8)
    tmp = np.empty_like(value)
    for k in range(3):  # one channel at a time: 3× less temporary memory, much faster
        np.multiply(value, rgb[:, k, None, None], out=tmp)
        out[..., k] = np.rint(tmp, out=tmp)
    return out


def render(factors: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Render pieces: (n, 5) array or DataFrame with the factor columns → uint8 (n, 32, 32, 3)."""
    f = as_factor_array(factors)
    out = np.empty((f.shape[0], SIZE, SIZE, 3), dtype=np.uint8)
    for s in range(0, f.shape[0], CHUNK):
        colorize(coverage(f[s:s + CHUNK]), f[s:s + CHUNK, 1], out=out[s:s + CHUNK])
    return out
