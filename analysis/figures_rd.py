"""Rate-distortion figures (paper Fig. 3–6, 8), drawn from the summary table only.

Every function takes ``summary`` (``analysis.tables.summarise``: one row per split ×
architecture × objective × options × β × set with ``<metric>_mean``/``_std``) and an output
stem, and returns the written PNG/PDF paths or a :class:`Skipped` note.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.plot_style import (
    MARKERS,
    SET_STYLES,
    FigureResult,
    Skipped,
    color,
    figure,
    save,
    short_count,
    styled,
)
from analysis.tables import SUMMARY_METRICS, option_columns

MAIN_OBJECTIVE = "beta_vae"
R_LABEL = "rate $R$ (nats)"
D_LABEL = "distortion $D$ (nats)"
_SIZED = re.compile(r"^(cv|cd)-(\d+)$")


# ---------------------------------------------------------------- selection and labels
def variant_columns(summary: pd.DataFrame) -> list[str]:
    """Columns that tell objectives apart: ``objective`` plus its flattened options."""
    return ["objective", *option_columns_of_summary(summary)]


def rows_of_curve(rows: pd.DataFrame, curve: pd.DataFrame, columns: list[str]
                  ) -> pd.DataFrame:
    """The ``rows`` whose values in ``columns`` are those of a drawn ``curve`` (one value per
    column along a curve; a missing value matches a missing value)."""
    for column in columns:
        value = curve[column].iloc[0]
        rows = rows[rows[column].isna() if pd.isna(value) else rows[column] == value]
    return rows


def option_columns_of_summary(summary: pd.DataFrame) -> list[str]:
    """Flattened objective options (e.g. ``block_size``) among the summary's columns."""
    metric_cols = {f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")}
    fixed = {"split", "architecture", "objective", "beta", "set", "n_seeds", "n_train", "n",
             "set_size"}
    return [c for c in option_columns(summary) if c not in metric_cols | fixed]


def variant_label(row: pd.Series | dict, columns: list[str]) -> str:
    """``beta_vae`` or ``beta_vae_block (block_size=2)``."""
    opts = [f"{c}={_fmt_opt(row[c])}" for c in columns[1:] if pd.notna(row[c])]
    return row["objective"] + (f" ({', '.join(opts)})" if opts else "")


def _fmt_opt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def main_objective(summary: pd.DataFrame) -> str:
    """``beta_vae`` when present (the paper's curves), else the first objective by name."""
    objectives = sorted(summary["objective"].unique())
    return MAIN_OBJECTIVE if MAIN_OBJECTIVE in objectives else objectives[0]


def _main(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of the main objective with no options (plain β-VAE curves); for a split and
    architecture whose every row has some (only block-diagonal runs, two learning rates, an
    architecture's own options), its most common variant."""
    rows = summary[summary["objective"] == main_objective(summary)]
    options = option_columns_of_summary(summary)
    if not options or rows.empty:
        return rows
    kept = []
    for _, group in rows.groupby(["split", "architecture"], sort=False):
        plain = group[group[options].isna().all(axis=1)]
        if not plain.empty:
            kept.append(plain)
            continue
        labels = [tuple(None if pd.isna(v) else v for v in r)
                  for r in group[options].itertuples(index=False)]
        common = Counter(labels).most_common(1)[0][0]  # ties: the first in the summary's order
        kept.append(group[[label == common for label in labels]])
    return pd.concat(kept).loc[lambda t: t.index.isin(rows.index)].sort_index()


def arch_order(architectures: object) -> list[str]:
    """The registry's order (MLPs, CNNs, Kumar & Poole's), then user models by name."""
    from benchmark.architectures import registry

    order = {name: i for i, name in enumerate(registry())}
    return sorted(set(architectures), key=lambda a: (order.get(a, len(order)), a))


def _family(arch: str) -> str:
    from benchmark.models import architecture_family

    try:
        return architecture_family(arch)[0]
    except Exception:  # an architecture no longer known: its own family
        return arch


def split_label(summary: pd.DataFrame, split: str) -> str:
    """``cv-16384 (16k/147k)``: the split name with its train/test sizes."""
    rows = summary[summary["split"] == split]
    n_train = rows["n_train"].dropna()
    n_test = rows.loc[rows["set"] == "test", "set_size"].dropna()
    if n_train.empty or n_test.empty:
        return split
    return f"{split} ({short_count(n_train.iloc[0])}/{short_count(n_test.iloc[0])})"


def sized_splits(summary: pd.DataFrame, family: str) -> list[str]:
    """The ``cv-N`` or ``cd-N`` splits present, by N."""
    found = [(int(m.group(2)), s) for s in summary["split"].unique()
             if (m := _SIZED.match(s)) and m.group(1) == family]
    return [s for _, s in sorted(found)]


# ---------------------------------------------------------------- drawing primitives
def draw_rd_curve(ax: plt.Axes, rows: pd.DataFrame, *, colour: str, label: str | None,
                  marker: str = "o", linestyle: str = "-", alpha: float = 1.0,
                  annotate: bool = False) -> None:
    """One RD curve: points in β order with std bars in R and D, β = 1 starred.

    Rows with a non-finite rate (a deterministic autoencoder: R = ∞) become a horizontal
    line at their mean distortion.
    """
    rows = rows.sort_values("beta")
    finite = rows[np.isfinite(rows["rate_mean"])]
    if finite.empty:
        if not rows.empty:
            ax.axhline(rows["distortion_mean"].mean(), color=colour, linestyle=":",
                       label=None if label is None else f"{label} (R = ∞)")
        return
    x, y = finite["rate_mean"].to_numpy(), finite["distortion_mean"].to_numpy()
    ax.errorbar(x, y, xerr=finite["rate_std"].fillna(0), yerr=finite["distortion_std"].fillna(0),
                color=colour, marker=marker, linestyle=linestyle, alpha=alpha, label=label,
                elinewidth=0.8, markersize=4, zorder=3)
    one = np.isclose(finite["beta"].to_numpy(), 1.0)
    ax.scatter(x[one], y[one], marker="*", s=140, facecolor="white", edgecolor=colour,
               linewidth=1.0, zorder=5, alpha=alpha)
    if annotate:
        for text, (xi, yi) in beta_labels(ax, finite["beta"].to_numpy(), x, y):
            ax.annotate(text, (xi, yi), xytext=(4, 3), textcoords="offset points",
                        fontsize=6.5, color=colour, zorder=6)


def beta_labels(ax: plt.Axes, betas: np.ndarray, x: np.ndarray, y: np.ndarray,
                min_px: float = 9.0) -> list[tuple[str, tuple[float, float]]]:
    """β labels with points closer than ``min_px`` on screen merged ("0.001–0.01").

    Uses the current limits, so it is called after the data are drawn (autoscaled).
    """
    ax.autoscale_view()
    screen = ax.transData.transform(np.column_stack([x, y]))  # (n, 2) pixels
    groups: list[list[int]] = []
    for i in range(len(betas)):
        if groups and np.hypot(*(screen[i] - screen[groups[-1][0]])) < min_px:
            groups[-1].append(i)
        else:
            groups.append([i])
    labels = []
    for g in groups:
        text = f"{betas[g[0]]:g}" if len(g) == 1 else f"{betas[g[0]]:g}–{betas[g[-1]]:g}"
        labels.append((text, (x[g[0]], y[g[0]])))
    return labels


def draw_iso_elbo(ax: plt.Axes, n_lines: int = 7) -> None:
    """Light dashed diagonals D + R = const (iso-contours of the β = 1 ELBO) over the limits."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    levels = MaxNLocator(n_lines).tick_values(x0 + y0, x1 + y1)
    xs = np.array([x0, x1])
    for c in levels:
        ax.plot(xs, c - xs, color="0.6", linestyle=(0, (4, 3)), linewidth=0.6, zorder=1)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _freeze_limits(axes: list[plt.Axes], share: bool) -> None:
    for ax in axes:
        ax.margins(0.08)
        ax.autoscale_view()
    if share:
        x = [ax.get_xlim() for ax in axes]
        y = [ax.get_ylim() for ax in axes]
        for ax in axes:
            ax.set_xlim(min(a for a, _ in x), max(b for _, b in x))
            ax.set_ylim(min(a for a, _ in y), max(b for _, b in y))
    for ax in axes:
        draw_iso_elbo(ax)


def _marker_legend() -> list[Line2D]:
    return [
        Line2D([], [], marker="*", markersize=10, markerfacecolor="white", color="0.2",
               linestyle="none", label="β = 1"),
        Line2D([], [], color="0.6", linestyle=(0, (4, 3)), linewidth=0.8,
               label="iso-ELBO: D + R = const"),
    ]


def set_legend() -> list[Line2D]:
    return [Line2D([], [], color="0.2", label=f"{s} set", **SET_STYLES[s])
            for s in ("train", "test")]


def finish(fig: plt.Figure, handles: list, title: str, ncol: int = 4) -> None:
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol)


def _label_axes(axes: list[plt.Axes]) -> None:
    for ax in axes:
        ax.set_xlabel(R_LABEL)
        ax.set_ylabel(D_LABEL)


# ---------------------------------------------------------------- figures
@styled
def plot_rd(summary: pd.DataFrame, split: str, architecture: str, stem: Path) -> FigureResult:
    """Fig. 3: β-VAE train and test RD curves side by side, points labelled with β."""
    main = _main(summary)
    rows = main[(main["split"] == split) & (main["architecture"] == architecture)]
    if rows.empty:
        return Skipped(f"no evaluated {main_objective(summary)} runs for {split} / {architecture}")
    fig, axes = figure(1, 2, width=3.6, height=3.2)
    for ax, set_name in zip(axes[0], ("train", "test"), strict=True):
        draw_rd_curve(ax, rows[rows["set"] == set_name], colour=color(0), label=None,
                      annotate=True)
        ax.set_title(f"{set_name} set")
    _label_axes(list(axes[0]))
    _freeze_limits(list(axes[0]), share=True)
    handle = Line2D([], [], color=color(0), marker="o",
                    label=f"{main_objective(summary)}, mean ± std over seeds (labels: β)")
    finish(fig, [handle, *_marker_legend()], f"{split_label(summary, split)} · {architecture}",
            ncol=3)
    return save(fig, stem)


@styled
def plot_rd_sizes(summary: pd.DataFrame, stem: Path) -> FigureResult:
    """Fig. 4: test RD curves across training-set sizes; a row per CV/CD, a column per arch.

    Panels without runs are hidden; each row has its own legend of sizes (dark = small).
    """
    test = _main(summary)
    test = test[test["set"] == "test"]
    families = [f for f in ("cv", "cd") if len(sized_splits(test, f)) >= 2]
    if not families:
        return Skipped("needs runs on at least two cv-N or two cd-N splits")
    sized = sum((sized_splits(test, f) for f in families), [])
    archs = arch_order(test[test["split"].isin(sized)]["architecture"])
    fig, axes = figure(len(families), len(archs), width=3.4, height=3.0)
    used = []
    for r, family in enumerate(families):
        splits = sized_splits(test, family)
        shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(splits)))
        for c, arch in enumerate(archs):
            ax, rows = axes[r][c], test[(test["architecture"] == arch)]
            if rows[rows["split"].isin(splits)].empty:
                ax.set_visible(False)
                continue
            used.append(ax)
            for shade, split in zip(shades, splits, strict=True):
                draw_rd_curve(ax, rows[rows["split"] == split], colour=shade, label=None)
            ax.set_title(f"{family.upper()} · {arch} · test set")
        handles = [Line2D([], [], color=shade, marker="o", label=split_label(test, split))
                   for shade, split in zip(shades, splits, strict=True)]
        axes[r][-1].legend(handles=handles, title="split (train/test)", loc="upper left",
                           bbox_to_anchor=(1.02, 1.0))
        axes[r][-1].set_visible(True)
        if axes[r][-1] not in used:
            axes[r][-1].axis("off")
    _label_axes(used)
    _freeze_limits(used, share=False)
    finish(fig, _marker_legend(), "Test RD curves across training-set sizes", ncol=2)
    return save(fig, stem)


def comparison_splits(summary: pd.DataFrame) -> list[str]:
    """Fig. 5 splits present: CV 82k (``cv-81920``, else ``random``), CV 16k, checkerboard."""
    present = set(summary["split"])
    dense = "cv-81920" if "cv-81920" in present else "random"
    return [s for s in (dense, "cv-16384", "checkerboard") if s in present]


@styled
def plot_rd_splits(summary: pd.DataFrame, stem: Path) -> FigureResult:
    """Fig. 5: CV (82k/82k) vs CV (16k/147k) vs checkerboard; train dashed, test solid."""
    main = _main(summary)
    splits = comparison_splits(main)
    if len(splits) < 2:
        return Skipped("needs at least two of cv-81920 (or random), cv-16384, checkerboard")
    archs = arch_order(main[main["split"].isin(splits)]["architecture"])
    fig, axes = figure(1, len(archs), width=3.4, height=3.2)
    for c, arch in enumerate(archs):
        for i, split in enumerate(splits):
            for set_name in ("train", "test"):
                rows = main[(main["split"] == split) & (main["architecture"] == arch)
                            & (main["set"] == set_name)]
                draw_rd_curve(axes[0][c], rows, colour=color(i), label=None,
                              marker=MARKERS[i], **SET_STYLES[set_name])
        axes[0][c].set_title(arch)
    handles = [Line2D([], [], color=color(i), marker=MARKERS[i], label=split_label(main, s))
               for i, s in enumerate(splits)]
    _label_axes(list(axes.flat))
    _freeze_limits(list(axes.flat), share=False)
    finish(fig, handles + set_legend() + _marker_legend(), "RD curves across splits", ncol=4)
    return save(fig, stem)


@styled
def plot_rd_mlp_vs_cnn(summary: pd.DataFrame, stem: Path) -> FigureResult:
    """Fig. 6: MLP vs CNN on one split (``cv-16384`` when it has both); train and test."""
    main = _main(summary)
    both = [s for s in sorted(main["split"].unique())
            if {"mlp", "cnn"} <= {_family(a) for a in main.loc[main["split"] == s,
                                                             "architecture"]}]
    if not both:
        return Skipped("needs MLP and CNN runs on the same split")
    split = "cv-16384" if "cv-16384" in both else both[0]
    rows = main[(main["split"] == split)
                & main["architecture"].map(_family).isin(("mlp", "cnn"))]
    archs = arch_order(rows["architecture"])
    fig, axes = figure(1, 2, width=3.6, height=3.2)
    for i, arch in enumerate(archs):
        for ax, set_name in zip(axes[0], ("train", "test"), strict=True):
            g = rows[(rows["architecture"] == arch) & (rows["set"] == set_name)]
            draw_rd_curve(ax, g, colour=color(i), marker=MARKERS[i % 8], label=None)
    for ax, set_name in zip(axes[0], ("train", "test"), strict=True):
        ax.set_title(f"{set_name} set")
    handles = [Line2D([], [], color=color(i), marker=MARKERS[i % 8], label=a)
               for i, a in enumerate(archs)]
    _label_axes(list(axes[0]))
    _freeze_limits(list(axes[0]), share=True)
    finish(fig, handles + _marker_legend(), f"MLP vs CNN · {split_label(main, split)}")
    return save(fig, stem)


@styled
def plot_rd_objectives(summary: pd.DataFrame, stem: Path) -> FigureResult:
    """Objectives compared on the test RD plane: a panel per split × architecture with ≥ 2."""
    cols = variant_columns(summary)
    test = summary[summary["set"] == "test"]
    n_variants = test.groupby(["split", "architecture"])[cols].apply(
        lambda g: len(g.drop_duplicates()))
    panels = list(n_variants[n_variants >= 2].index)
    if not panels:
        return Skipped("only one objective per split and architecture")
    variants = test[cols].drop_duplicates().sort_values(cols).reset_index(drop=True)
    labels = [variant_label(v, cols) for _, v in variants.iterrows()]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = figure(nrows, ncols, width=3.4, height=3.0)
    for ax, (split, arch) in zip(axes.flat, panels, strict=False):
        rows = test[(test["split"] == split) & (test["architecture"] == arch)]
        for _, g in rows.groupby(cols, dropna=False, sort=True):
            k = labels.index(variant_label(g.iloc[0], cols))
            draw_rd_curve(ax, g, colour=color(k), marker=MARKERS[k % 8], label=None)
        ax.set_title(f"{split_label(summary, split)} · {arch} · test", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [_variant_handle(test, cols, k, lab)
               for k, lab in enumerate(labels)]
    used = list(axes.flat)[: len(panels)]
    _label_axes(used)
    _freeze_limits(used, share=False)
    finish(fig, handles + _marker_legend(), "Objectives on the test RD plane", ncol=3)
    return save(fig, stem)


def _variant_handle(rows: pd.DataFrame, cols: list[str], k: int, label: str) -> Line2D:
    """A legend entry: marker and line, or a dotted line for a variant with R = ∞ (an AE)."""
    mine = rows[[variant_label(r, cols) == label for _, r in rows.iterrows()]]
    if np.isfinite(mine["rate_mean"]).any():
        return Line2D([], [], color=color(k), marker=MARKERS[k % 8], label=label)
    return Line2D([], [], color=color(k), linestyle=":", label=f"{label} (R = ∞, mean over β)")


@styled
def plot_rd_datasets(summaries: Mapping[str, pd.DataFrame], stem: Path) -> FigureResult:
    """Bozkurt et al.'s Fig. 7: test RD curves, a panel per dataset, one curve per
    architecture (1-layer vs 3-layer networks), each on its split. ``summaries``: each
    dataset's summary by its label (the report's: the directory name, with 6 digits of the
    fingerprint where two datasets share one)."""
    per_dataset = {}
    for dataset, own in summaries.items():  # each dataset's own main curves
        main = _main(own) if not own.empty else own
        if not main.empty:
            per_dataset[dataset] = main[main["set"] == "test"]
    if len(per_dataset) < 2:
        return Skipped("the runs are on one dataset (Fig. 7 compares several)")
    datasets = list(per_dataset)
    archs = arch_order(pd.concat(per_dataset.values())["architecture"])
    ncols = min(4, len(datasets))
    fig, axes = figure(-(-len(datasets) // ncols), ncols, width=3.3, height=3.1)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    for ax, dataset in zip(axes.flat, datasets, strict=False):
        rows = per_dataset[dataset]
        for i, arch in enumerate(archs):
            for split in sorted(rows["split"].unique()):
                draw_rd_curve(ax, rows[(rows["architecture"] == arch) & (rows["split"] == split)],
                              colour=color(i), marker=MARKERS[i % 8], label=None)
        splits = ", ".join(split_label(rows, s) for s in sorted(rows["split"].unique()))
        ax.set_title(f"{dataset} · {splits}", fontsize=8)
    handles = [Line2D([], [], color=color(i), marker=MARKERS[i % 8], label=a)
               for i, a in enumerate(archs)]
    used = list(axes.flat)[:len(datasets)]
    _label_axes(used)
    _freeze_limits(used, share=False)
    finish(fig, handles + _marker_legend(), "Test RD curves across datasets (Bozkurt et al. "
           "Fig. 7)")
    return save(fig, stem)
