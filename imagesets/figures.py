"""Dataset figures for any dataset: samples grid (Bozkurt et al. Fig. 1) and split picture
(Fig. 2), grayscale or colour, any image size.

Colours are Okabe–Ito (colour-blind safe) and train/test also differ in marker shape. Files
are written atomically; the format follows the suffix (.png or .pdf).
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

from imagesets.data import ImageSet, load  # noqa: E402
from imagesets.splits import factor_range, half_indices, ordered_factors  # noqa: E402
from rdbench.io import FIGURE_METADATA, atomic_write_bytes  # noqa: E402

TRAIN, TEST, OTHER = "#0072B2", "#D55E00", "#BBBBBB"  # Okabe–Ito blue, vermillion; grey


def save_figure(fig, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` atomically as PNG or PDF (by suffix) and close it."""
    path = Path(path)
    buffer = io.BytesIO()
    png = path.suffix.lower() != ".pdf"
    fig.savefig(buffer, format="png" if png else "pdf", dpi=dpi, bbox_inches="tight",
                metadata={**FIGURE_METADATA, "Software": None} if png else FIGURE_METADATA)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def mosaic(images: np.ndarray, cols: int, gap: int = 2, fill: int = 60) -> np.ndarray:
    """Tile uint8 (k, H, W, C) images into one RGB uint8 image with ``gap``-pixel gutters
    (grayscale images are repeated into three channels)."""
    images = np.asarray(images)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    rows = -(-len(images) // cols)
    h, w = images.shape[1] + gap, images.shape[2] + gap
    canvas = np.full((rows * h + gap, cols * w + gap, 3), fill, dtype=np.uint8)
    for k, image in enumerate(images):
        i, j = divmod(k, cols)
        canvas[gap + i * h:(i + 1) * h, gap + j * w:(j + 1) * w] = image
    return canvas


def show_image(ax, image: np.ndarray) -> None:
    """One image (H, W, C) with C ∈ {1, 3}, uint8 or float in [0, 1], without axes ticks."""
    image = np.asarray(image)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1 if image.dtype != np.uint8 else 255,
                  interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")


def _as_data(data: ImageSet | str | os.PathLike) -> ImageSet:
    return data if isinstance(data, ImageSet) else load(data)


def _pick(n_total: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(k, n_total), replace=False))


def draw_samples(ax, data: ImageSet, rows: int = 8, cols: int = 8, seed: int = 0,
                 indices: Sequence[int] | None = None) -> None:
    """A grid of dataset images on ``ax`` (random rows of ``seed`` unless ``indices``)."""
    shown = np.asarray(indices) if indices is not None else _pick(len(data), rows * cols, seed)
    ax.imshow(mosaic(np.asarray(data.images[shown]), min(cols, len(shown))),
              interpolation="nearest")
    ax.set_axis_off()


def display_factors(data: ImageSet) -> tuple[str, str] | None:
    """The two factors a split picture uses by default: the manifest's ``display_factors``,
    else the first two non-categorical factors; None when there are not two."""
    chosen = data.manifest.get("display_factors")
    names = [s.name for s in ordered_factors(data.factor_specs)]
    if isinstance(chosen, list) and len(chosen) == 2 and all(c in names for c in chosen):
        return chosen[0], chosen[1]
    return (names[0], names[1]) if len(names) >= 2 else None


def split_picture_note(data: ImageSet) -> str | None:
    """Why there is no split picture for ``data`` (None when there is one)."""
    if display_factors(data) is None:
        return (f"the {data.kind} dataset has fewer than two non-categorical factors, so "
                "there is no factor plane to draw its splits on")
    return None


def _label(data: ImageSet, name: str) -> str:
    spec = next(s for s in data.factor_specs if s.name == name)
    return spec.label or name


def _split_points(data: ImageSet, split: str, factors: tuple[str, str], n: int, seed: int,
                  slice_others: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows to plot and their role: 0 train, 1 test, 2 in neither."""
    train, test = data.split(split)
    role = np.full(len(data), 2)
    role[train], role[test] = 0, 1
    pool = np.arange(len(data))
    others = [i for i, s in enumerate(ordered_factors(data.factor_specs))
              if s.name not in factors]
    if slice_others and others:  # other factors in their lower half: the k-D structure in 2-D
        pool = pool[(half_indices(data.factors, data.factor_specs)[:, others] == 0).all(axis=1)]
    rows = pool[_pick(len(pool), n, seed)]
    return rows, role[rows]


def draw_split(ax, data: ImageSet, split: str, factors: tuple[str, str] | None = None,
               n: int = 600, seed: int = 0, slice_others: bool = True) -> None:
    """Scatter of ``n`` samples on two factors, train vs test (and rows in neither); a cd
    split's box dashed."""
    factors = factors or display_factors(data)
    rows, role = _split_points(data, split, factors, n, seed, slice_others)
    fx, fy = (data.factors[f].to_numpy()[rows] for f in factors)
    styles = [(TRAIN, "o", "train"), (TEST, "^", "test"), (OTHER, ".", "in neither")]
    for r, (colour, marker, label) in enumerate(styles):
        if (role == r).any():
            ax.scatter(fx[role == r], fy[role == r], s=10, c=colour, marker=marker,
                       label=label, linewidths=0, alpha=0.9)
    box = data.split_info(split).get("box") or {}
    if factors[0] in box and factors[1] in box:
        (x0, x1), (y0, y1) = box[factors[0]], box[factors[1]]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1, ec="k"))
    specs = {s.name: s for s in data.factor_specs}
    for set_limits, name in ((ax.set_xlim, factors[0]), (ax.set_ylim, factors[1])):
        bounds = factor_range(specs[name], data.factors)
        set_limits(*(bounds if specs[name].range is not None else _padded(bounds)))
    ax.set_xlabel(_label(data, factors[0]))
    ax.set_ylabel(_label(data, factors[1]))
    info = data.split_info(split)
    ax.set_title(f"{split} ({info['train']:,} / {info['test']:,})", fontsize=10)
    ax.set_aspect(1.0 / ax.get_data_ratio())


def _padded(bounds: tuple[float, float]) -> tuple[float, float]:
    """An observed [min, max] (points on the edges) padded by 4 %."""
    lo, hi = bounds
    pad = 0.04 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def plot_samples(data: ImageSet | str | os.PathLike, path: str | os.PathLike, rows: int = 8,
                 cols: int = 8, seed: int = 0, indices: Sequence[int] | None = None) -> Path:
    """Paper Fig. 1: a grid of samples, written to ``path`` (.png/.pdf)."""
    data = _as_data(data)
    fig, ax = plt.subplots(figsize=(cols * 0.6, rows * 0.6))
    draw_samples(ax, data, rows, cols, seed, indices)
    return save_figure(fig, path)


def plot_split(data: ImageSet | str | os.PathLike, split: str | Sequence[str],
               path: str | os.PathLike, factors: tuple[str, str] | None = None, n: int = 600,
               seed: int = 0, slice_others: bool = True) -> Path:
    """Paper Fig. 2: ``n`` samples on two factors, train vs test; one panel per split.

    ``split`` may be a list (e.g. random, checkerboard, cd-16384, cv-16384 as in the paper).
    With ``slice_others`` only samples whose other non-categorical factors lie in the lower
    half of their ranges are drawn, so a k-D split (checkerboard, CD box) shows its 2-D
    section.
    """
    data = _as_data(data)
    names = [split] if isinstance(split, str) else list(split)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        draw_split(ax, data, name, factors, n, seed, slice_others)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_overview(data: ImageSet | str | os.PathLike, split: str, path: str | os.PathLike,
                  factors: tuple[str, str] | None = None, n: int = 600, seed: int = 0) -> Path:
    """``rdbench data show``: the samples grid beside the split picture (where the dataset
    has two non-categorical factors), one file."""
    data = _as_data(data)
    factors = factors or display_factors(data)
    if factors is None:
        fig, left = plt.subplots(figsize=(5.2, 4.6))
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 4.4),
                                          gridspec_kw={"width_ratios": [1.15, 1]})
        draw_split(right, data, split, factors, n, seed)
        right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    draw_samples(left, data, seed=seed)
    left.set_title(f"{data.kind}: samples ({len(data):,} images)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
