"""Image figures of the report: reconstructions of the hard example (Fig. 3 top),
nearest-neighbour distances per split, dataset samples and split pictures (Fig. 1, 2).

The RD figures live in :mod:`analysis.figures_rd` and are re-exported here. Reconstructions
are the one place the report touches a model: it decodes the posterior mean of one image
per run and recomputes no estimator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis.figures_rd import (
    _main,
    comparison_splits,
    finish,
    main_objective,
    plot_rd,
    plot_rd_datasets,
    plot_rd_mlp_vs_cnn,
    plot_rd_objectives,
    plot_rd_sizes,
    plot_rd_splits,
    rows_of_curve,
    set_legend,
    split_label,
    variant_columns,
    variant_label,
)
from analysis.plot_style import (
    LINESTYLES,
    MARKERS,
    SET_STYLES,
    FigureResult,
    Skipped,
    beta_axis,
    color,
    figure,
    safe_name,
    save,
    styled,
)
from analysis.tables import evaluated, summarise
from imagesets import figures as dataset_figures
from imagesets.figures import show_image
from rdbench.io import within

__all__ = [
    "comparison_splits", "load_neighbours", "main_objective", "neighbours_of",
    "plot_dataset_samples", "plot_mi_kl", "plot_nn_distances", "plot_paper_splits", "plot_rd",
    "plot_rd_datasets", "plot_rd_mlp_vs_cnn", "plot_rd_objectives", "plot_rd_sizes",
    "plot_rd_splits", "plot_reconstructions", "plot_split_picture", "split_label",
]

Neighbours = Mapping[str, Mapping[str, np.ndarray]]
_NEIGHBOUR_KEYS = ("test", "distance", "nearest", "hard")


def load_neighbours(runs_dir: Path) -> tuple[dict[tuple[str | None, str], dict[str, np.ndarray]],
                                             list[str]]:
    """``RUNS_DIR/neighbours/<split>.<fingerprint>.npz`` as arrays, keyed by (dataset
    fingerprint, split) — ``<split>.npz`` of earlier versions by (its stored fingerprint or
    None, split) — plus a note for every unreadable file."""
    found, notes = {}, []
    for path in sorted((Path(runs_dir) / "neighbours").glob("*.npz")):
        if not within(path, runs_dir):  # a link to any file of the user's: never read
            notes.append(f"skipped {path.name}: a symbolic link to a file outside {runs_dir}")
            continue
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in _NEIGHBOUR_KEYS}
                stored = str(npz["dataset_fingerprint"]) if "dataset_fingerprint" in npz \
                    else None
        except (OSError, ValueError, KeyError) as e:
            notes.append(f"unreadable {path.name}: {e}")
            continue
        split, _, tail = path.stem.rpartition(".")
        named = re.fullmatch(r"[0-9a-f]{16}", tail) is not None
        found[(tail if named else stored, split if named else path.stem)] = arrays
    return found, notes


def neighbours_of(neighbours: Mapping, fingerprint: str | None) -> dict[str, Mapping]:
    """The neighbours of one dataset, by split (files without a fingerprint count for any)."""
    return {split: arrays for (fp, split), arrays in neighbours.items()
            if fp is None or fingerprint is None or fp == fingerprint}


# ---------------------------------------------------------------- rate decomposition (Fig. 8)
@styled
def plot_mi_kl(summary: pd.DataFrame, split: str, architecture: str, stem: Path) -> FigureResult:
    """Fig. 8: Î(x;z) and KL(q(z)‖p(z)) against β (log axis), train and test, log N lines."""
    rows = summary[(summary["split"] == split) & (summary["architecture"] == architecture)
                   & np.isfinite(summary["mutual_information_mean"])]
    if rows.empty:
        return Skipped(f"no rate decomposition for {split} / {architecture}")
    cols = variant_columns(summary)
    fig, axes = figure(1, 2, width=3.6, height=3.0)
    handles = []
    for i, (_, g) in enumerate(rows.groupby(cols, dropna=False, sort=True)):
        handles.append(Line2D([], [], color=color(i), marker=MARKERS[i % 8],
                              label=variant_label(g.iloc[0], cols)))
        for set_name in ("train", "test"):
            s = g[g["set"] == set_name].sort_values("beta")
            for ax, m in zip(axes[0], ("mutual_information", "marginal_kl"), strict=True):
                ax.errorbar(s["beta"], s[f"{m}_mean"], yerr=s[f"{m}_std"].fillna(0),
                            color=color(i), marker=MARKERS[i % 8], elinewidth=0.8,
                            **SET_STYLES[set_name])
    _log_n_lines(axes[0][0], rows)
    for ax, title in zip(axes[0], ("$\\hat I(x;z)$", "KL$(q(z)\\,\\|\\,p(z))$"), strict=True):
        beta_axis(ax, rows["beta"])
        ax.axvline(1.0, color="0.7", linewidth=0.8, zorder=0)
        ax.set_ylabel(f"{title} (nats)")
        ax.set_title(title)
    extra = [Line2D([], [], color="0.35", linewidth=0.9, linestyle="-.", label="log $N_{train}$"),
             Line2D([], [], color="0.35", linewidth=0.9, linestyle=":", label="log $N_{test}$"),
             Line2D([], [], color="0.7", linewidth=0.8, label="β = 1")]
    finish(fig, handles + set_legend() + extra, f"Rate decomposition · "
            f"{split_label(summary, split)} · {architecture}", ncol=3)
    return save(fig, stem)


def _log_n_lines(ax: plt.Axes, rows: pd.DataFrame) -> None:
    """Horizontal lines at log N_train (dash-dot) and log N_test (dotted): the bound Î ≤ log N."""
    n_train = rows["n_train"].dropna()
    n_test = rows.loc[rows["set"] == "test", "set_size"].dropna()
    if not n_train.empty:
        ax.axhline(np.log(n_train.iloc[0]), color="0.35", linewidth=0.9, linestyle="-.",
                   zorder=1)
    if not n_test.empty:
        ax.axhline(np.log(n_test.iloc[0]), color="0.35", linewidth=0.9, linestyle=":",
                   zorder=1)


# ---------------------------------------------------------------- nearest-neighbour distances
@styled
def plot_nn_distances(neighbours: Neighbours, stem: Path) -> FigureResult:
    """ECDF of test-to-nearest-train distances per split, and a box plot sorted by median
    with the hard (90th-percentile) example marked."""
    if not neighbours:
        return Skipped("no RUNS_DIR/neighbours/*.npz (run `rdbench evaluate` first)")
    splits = sorted(neighbours, key=lambda s: np.median(neighbours[s]["distance"]))
    height = max(3.0, 0.22 * len(splits) + 1.2)
    fig, axes = figure(1, 2, width=3.9, height=height)
    ecdf, box = axes[0]
    for i, split in enumerate(splits):
        d = np.sort(neighbours[split]["distance"].astype(float))
        ecdf.step(d, np.arange(1, d.size + 1) / d.size, where="post", color=color(i),
                  linestyle=LINESTYLES[(i // 8) % 4], label=split)
    ecdf.axhline(0.9, color="0.5", linestyle=":", linewidth=0.8)
    ecdf.set_xlabel("ℓ₂ distance to nearest training image")
    ecdf.set_ylabel("fraction of test images")
    ecdf.set_title("ECDF")
    data = [neighbours[s]["distance"].astype(float) for s in splits]
    box.boxplot(data, orientation="horizontal", tick_labels=splits, showfliers=False,
                widths=0.6, medianprops={"color": color(1)})
    hard = [_hard_distance(neighbours[s]) for s in splits]
    box.scatter(hard, np.arange(1, len(splits) + 1), marker="*", s=70, color=color(0),
                zorder=4, label="hard example (90th pct.)")
    box.set_xlabel("ℓ₂ distance to nearest training image")
    box.set_title("per split (whiskers 1.5 IQR)")
    box.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ecdf.legend(loc="lower right", ncol=1 + len(splits) // 10)
    fig.suptitle("Test-to-train nearest-neighbour distances (pixel values in [0, 1])")
    fig.tight_layout()
    return save(fig, stem)


def _hard_distance(nb: Mapping[str, np.ndarray]) -> float:
    """Distance of the ``hard`` example (a dataset row) as stored in the neighbours file."""
    where = np.flatnonzero(nb["test"] == int(nb["hard"]))
    return float(nb["distance"][where[0]]) if where.size else float("nan")


# ---------------------------------------------------------------- reconstructions
def _to_float_image(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0  # (H, W, C) in [0, 1]


def reconstruct(model: object, image: np.ndarray) -> np.ndarray:
    """The decoder's mean at the posterior mean (the model's likelihood: σ(decode(μ(x))) for
    the Bernoulli and the Gaussian alike), as (H, W, C) in [0, 1]."""
    import torch

    from imagesets.tensor import as_image, model_input

    with torch.no_grad():
        mu = model.encode(model_input(image[None]))[0]
        mean = model.likelihood.mean(model.decode(mu))  # (1, C, H, W)
    return as_image(mean[0])


def reconstruction_runs(runs: pd.DataFrame, split: str, architecture: str) -> pd.DataFrame:
    """One run per β of the curve :func:`plot_rd` draws for the split and architecture (the
    main objective's runs without options, else its most common variant): its smallest seed
    among the finished runs."""
    finished = evaluated(runs)
    done = finished[(finished["split"] == split) & (finished["architecture"] == architecture)]
    shown = _main(summarise(finished)) if not done.empty else done
    shown = shown[(shown["split"] == split) & (shown["architecture"] == architecture)]
    if shown.empty:
        return done.iloc[:0]
    done = rows_of_curve(done[done["set"] == "test"], shown, variant_columns(shown))
    return done.sort_values(["beta", "seed"]).groupby("beta", as_index=False).first()


@styled
def plot_reconstructions(runs: pd.DataFrame, split: str, architecture: str,
                         neighbours: Neighbours, images: np.ndarray | None,
                         load_model: Callable[[Path], object] | None, runs_dir: Path,
                         stem: Path) -> FigureResult:
    """Fig. 3 (top): the hard test example, its nearest training image, and one model's
    reconstruction per β (decoder mean at the posterior mean). ``neighbours``: the dataset's,
    by split (:func:`neighbours_of`)."""
    if split not in neighbours:
        return Skipped(f"no nearest-neighbour file for {split} (run `rdbench evaluate`)")
    if images is None or load_model is None:
        return Skipped("dataset or model loader unavailable (see the note above)")
    chosen = reconstruction_runs(runs, split, architecture)
    nb = neighbours[split]
    hard = int(nb["hard"])
    where = np.flatnonzero(nb["test"] == hard)
    nearest = int(nb["nearest"][where[0]]) if where.size else None
    recons = [_try_reconstruct(load_model, Path(runs_dir) / r.run_id, images[hard])
              for r in chosen.itertuples()]
    if not any(isinstance(r, np.ndarray) for r in recons):
        return Skipped(f"no loadable model for {split} / {architecture}")
    panels = [("hard test\nexample", _to_float_image(images[hard]))]
    if nearest is not None:
        panels.append((f"nearest train\nd = {_hard_distance(nb):.2f}",
                       _to_float_image(images[nearest])))
    panels += [(f"β = {r.beta:g}\nseed {r.seed}", rec)
               for r, rec in zip(chosen.itertuples(), recons, strict=True)]
    # runs rows carry split, set, n_train and n like the summary: enough for the label
    fig = _image_row(panels, f"Reconstructions of the hard test example · "
                     f"{split_label(evaluated(runs), split)} · {architecture}")
    return save(fig, stem)


def _try_reconstruct(load_model: Callable[[Path], object], run_dir: Path,
                     image: np.ndarray) -> np.ndarray | str:
    try:
        return reconstruct(load_model(run_dir), image)
    except Exception as e:  # broad on purpose: one bad model must not stop the report
        return f"no model\n({type(e).__name__})"


def _image_row(panels: list[tuple[str, np.ndarray | str]], title: str) -> plt.Figure:
    fig, axes = figure(1, len(panels), width=1.15, height=1.55)
    for ax, (label, image) in zip(axes[0], panels, strict=True):
        if isinstance(image, np.ndarray):
            show_image(ax, image)
        else:  # a note in place of the image, same frame size
            ax.imshow(np.ones((32, 32, 3)), interpolation="nearest")
            ax.text(15.5, 15.5, image, ha="center", va="center", fontsize=5.5, color="0.3")
        ax.set_title(label, fontsize=7.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("0.6")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- dataset (Fig. 1, 2)
def plot_dataset_samples(data: object, stem: Path) -> FigureResult:
    """Fig. 1: a grid of the dataset's images (PNG and PDF)."""
    return _both(lambda path: dataset_figures.plot_samples(data, path), stem)


def plot_split_picture(data: object, split: str, stem: Path) -> FigureResult:
    """Fig. 2 for one split, where the dataset has two non-categorical factors."""
    note = dataset_figures.split_picture_note(data)
    if note:
        return Skipped(note)
    return _both(lambda path: dataset_figures.plot_split(data, split, path), stem)


PAPER_SPLITS = ("random", "checkerboard", "cd-16384", "cv-16384")


def plot_paper_splits(data: object, stem: Path) -> FigureResult:
    """Fig. 2 as in the paper: random, checkerboard, CD 16k and CV 16k side by side."""
    names = [s for s in PAPER_SPLITS if s in getattr(data, "split_names", ())]
    note = dataset_figures.split_picture_note(data)
    if note or len(names) < 2:
        return Skipped(note or "the dataset lacks the paper's splits")
    return _both(lambda path: dataset_figures.plot_split(data, names, path), stem)


def _both(draw: Callable[[Path], object], stem: Path) -> FigureResult:
    paths = [stem.with_name(f"{safe_name(stem.name)}{ext}") for ext in (".png", ".pdf")]
    for path in paths:
        draw(path)
    return paths
