"""A plain per-image renderer in the style of the published generator (the bench baseline).

Each piece is drawn as a filled polygon with Pillow on a canvas ``supersample`` times larger
than the image, in its full colour round(255·rgb(hue)), then area-downsampled to 32 × 32
with ``Image.BOX`` (the mean of every supersample × supersample block), so a pixel ends up
≈ round(coverage · 255·rgb). Pillow fills boundary pixels of the polygon, which adds about
half a sub-pixel along the outline; at 16× this differs from the exact coverage of
:func:`tetrominoes.render` by < 1/255 on average.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from tetrominoes.factors import as_factor_array
from tetrominoes.raster import _CORNERS, SIZE, hue_to_rgb


def _polygon(angle: float, scale: float, x: float, y: float) -> list[tuple[float, float]]:
    """The 6 corners of the J in image coordinates (same geometry as ``render.outline``)."""
    theta = np.deg2rad(angle)
    u, v = _CORNERS[:, 0], _CORNERS[:, 1]
    X = x + 0.5 + scale * (u * np.cos(theta) + v * np.sin(theta))
    Y = y + 0.5 + scale * (-u * np.sin(theta) + v * np.cos(theta))
    return [(float(a), float(b)) for a, b in zip(X, Y, strict=True)]


def render_one(factors: np.ndarray, supersample: int = 16) -> np.ndarray:
    """One image, uint8 (32, 32, 3), from one row (angle, hue, scale, x, y)."""
    angle, hue, scale, x, y = (float(v) for v in factors)
    colour = tuple(int(c) for c in np.rint(255.0 * hue_to_rgb(np.array([hue]))[0]))
    big = SIZE * supersample
    canvas = Image.new("RGB", (big, big), (0, 0, 0))
    corners = [(a * supersample, b * supersample) for a, b in _polygon(angle, scale, x, y)]
    ImageDraw.Draw(canvas).polygon(corners, fill=colour)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.BOX))


def render_pillow(factors: pd.DataFrame | np.ndarray, supersample: int = 16) -> np.ndarray:
    """Per-image loop over :func:`render_one`: (n, 5) → uint8 (n, 32, 32, 3)."""
    f = as_factor_array(factors)
    out = np.empty((f.shape[0], SIZE, SIZE, 3), dtype=np.uint8)
    for i, row in enumerate(f):
        out[i] = render_one(row, supersample)
    return out
