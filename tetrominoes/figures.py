"""Dataset figures: samples grid (Bozkurt et al. Fig. 1) and split picture (Fig. 2).

Colours are Okabe–Ito (colour-blind safe) and train/test also differ in marker shape.
Files are written atomically; the format follows the suffix (.png or .pdf).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from rdbench.io import FIGURE_METADATA, atomic_write_bytes  # noqa: E402
from tetrominoes.data import Tetrominoes, load  # noqa: E402
from tetrominoes.factors import FACTOR_NAMES, RANGES  # noqa: E402
from tetrominoes.splits import cd_box, half_indices  # noqa: E402

TRAIN, TEST, OTHER = "#0072B2", "#D55E00", "#BBBBBB"  # Okabe–Ito blue, vermillion; grey
LABELS = {"angle": "angle (°)", "hue": "hue", "scale": "scale (px)", "x": "x (column)",
          "y": "y (row)"}


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` atomically as PNG or PDF (by suffix) and close it."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi,
                bbox_inches="tight", metadata={**FIGURE_METADATA, "Software": None}
                if path.suffix == ".png" else FIGURE_METADATA)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def mosaic(images: np.ndarray, cols: int, gap: int = 2, fill: int = 60) -> np.ndarray:
    """Tile uint8 (k, 32, 32, 3) images into one (rows·(32+gap)+gap, ...) uint8 image."""
    rows = -(-len(images) // cols)
    size = images.shape[1] + gap
    canvas = np.full((rows * size + gap, cols * size + gap, 3), fill, dtype=np.uint8)
    for k, image in enumerate(images):
        i, j = divmod(k, cols)
        canvas[gap + i * size:(i + 1) * size, gap + j * size:(j + 1) * size] = image
    return canvas


def _as_data(data: Tetrominoes | str | os.PathLike) -> Tetrominoes:
    return data if isinstance(data, Tetrominoes) else load(data)


def _pick(n_total: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(k, n_total), replace=False))


def draw_samples(ax, data: Tetrominoes, rows: int = 8, cols: int = 8, seed: int = 0,
                 indices: Sequence[int] | None = None) -> None:
    """A grid of dataset images on ``ax`` (random rows of ``seed`` unless ``indices``)."""
    rows_shown = np.asarray(indices) if indices is not None else _pick(len(data), rows * cols,
                                                                        seed)
    ax.imshow(mosaic(np.asarray(data.images[rows_shown]), cols), interpolation="nearest")
    ax.set_axis_off()


def _split_points(data: Tetrominoes, split: str, factors: tuple[str, str], n: int, seed: int,
                  slice_others: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows to plot and their role: 0 train, 1 test, 2 in neither."""
    train, test = data.split(split)
    role = np.full(len(data), 2)
    role[train], role[test] = 0, 1
    pool = np.arange(len(data))
    if slice_others:  # other factors in the lower half: the 5-D structure shows in 2-D
        others = [FACTOR_NAMES.index(f) for f in FACTOR_NAMES if f not in factors]
        pool = pool[(half_indices(data.factors)[:, others] == 0).all(axis=1)]
    rows = pool[_pick(len(pool), n, seed)]
    return rows, role[rows]


def draw_split(ax, data: Tetrominoes, split: str, factors: tuple[str, str] = ("x", "y"),
               n: int = 600, seed: int = 0, slice_others: bool = True) -> None:
    """Scatter of ``n`` samples on two factors, train vs test (and rows in neither)."""
    rows, role = _split_points(data, split, factors, n, seed, slice_others)
    fx, fy = (data.factors[f].to_numpy()[rows] for f in factors)
    styles = [(TRAIN, "o", "train"), (TEST, "^", "test"), (OTHER, ".", "in neither")]
    for r, (colour, marker, label) in enumerate(styles):
        if (role == r).any():
            ax.scatter(fx[role == r], fy[role == r], s=10, c=colour, marker=marker,
                       label=label, linewidths=0, alpha=0.9)
    if split.startswith("cd-"):
        box = cd_box(int(split.split("-")[1]))
        (x0, x1), (y0, y1) = box[factors[0]], box[factors[1]]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1, ec="k"))
    ax.set_xlim(*RANGES[factors[0]])
    ax.set_ylim(*RANGES[factors[1]])
    ax.set_xlabel(LABELS[factors[0]])
    ax.set_ylabel(LABELS[factors[1]])
    sizes = data.manifest["splits"][split]
    ax.set_title(f"{split} ({sizes['train']:,} / {sizes['test']:,})", fontsize=10)
    ax.set_aspect(1.0 / ax.get_data_ratio())


def plot_samples(data: Tetrominoes | str | os.PathLike, path: str | os.PathLike,
                 rows: int = 8, cols: int = 8, seed: int = 0,
                 indices: Sequence[int] | None = None) -> Path:
    """Paper Fig. 1: a grid of samples, written to ``path`` (.png/.pdf)."""
    data = _as_data(data)
    fig, ax = plt.subplots(figsize=(cols * 0.6, rows * 0.6))
    draw_samples(ax, data, rows, cols, seed, indices)
    return save_figure(fig, path)


def plot_split(data: Tetrominoes | str | os.PathLike, split: str | Sequence[str],
               path: str | os.PathLike, factors: tuple[str, str] = ("x", "y"), n: int = 600,
               seed: int = 0, slice_others: bool = True) -> Path:
    """Paper Fig. 2: ``n`` samples on two factors, train vs test; one panel per split.

    ``split`` may be a list (e.g. random, checkerboard, cd-16384, cv-16384 as in the paper).
    With ``slice_others`` only samples whose other three factors lie in the lower half of
    their ranges are drawn, so a 5-D split (checkerboard, CD box) shows its 2-D section.
    """
    data = _as_data(data)
    names = [split] if isinstance(split, str) else list(split)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        draw_split(ax, data, name, tuple(factors), n, seed, slice_others)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_overview(data: Tetrominoes | str | os.PathLike, split: str, path: str | os.PathLike,
                  factors: tuple[str, str] = ("x", "y"), n: int = 600, seed: int = 0) -> Path:
    """``rdbench data show``: the samples grid beside the split picture, one file."""
    data = _as_data(data)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.4),
                                      gridspec_kw={"width_ratios": [1.15, 1]})
    draw_samples(left, data, seed=seed)
    left.set_title(f"samples ({len(data):,} images, seed {data.seed})", fontsize=10)
    draw_split(right, data, split, tuple(factors), n, seed)
    right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)
