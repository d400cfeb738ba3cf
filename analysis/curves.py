"""Training curves (SPEC §11): every run's ``history.csv`` in one tidy table, and the figure
of loss, D and R against iteration per β (mean ± std over seeds), train and validation.

``collect_histories`` reads only files and returns one row per run and logged iteration
(``history.csv`` of the report); ``plot_training_curves`` draws one figure per split ×
architecture × objective (and model variant) from it, β on a sequential colour scale with a
colour bar, so the paper grid's 12 β stay readable.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.lines import Line2D

from analysis.plot_style import FigureResult, Skipped, figure, save, styled

CURVES = (("loss", "objective"), ("distortion", "distortion D"), ("rate", "rate R"))
IDENTITY = ("run_id", "split", "architecture", "objective", "beta", "seed")


def collect_histories(runs: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """One row per run and logged iteration: the run's keys (:func:`run_keys`), then
    ``iteration`` and the history's values (``val_*`` where the run had a validation set).
    Runs without a readable history are left out with one warning line."""
    from benchmark.runs import read_history
    from rdbench.io import InputError

    keys = run_keys(runs)
    per_run = runs.drop_duplicates("run_id")[keys]
    frames = []
    for row in per_run.itertuples(index=False):
        try:
            history = read_history(Path(runs_dir) / row.run_id)
        except InputError as e:
            print(f"rdbench report: warning: {e}", file=sys.stderr)
            continue
        if history:
            frame = pd.DataFrame(history)
            for key, value in zip(keys, row, strict=True):
                frame[key] = value
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*keys, "iteration"])
    table = pd.concat(frames, ignore_index=True)
    return table[[*keys, *(c for c in table.columns if c not in keys)]]


def run_keys(runs: pd.DataFrame) -> list[str]:
    """What tells apart runs in training: the runs table's columns up to ``beta``/``seed``,
    its objective options and the training settings that differ, never the estimator
    settings of their metrics (runs evaluated with other settings, or not yet, trained
    alike)."""
    from analysis.tables import ESTIMATOR_SETTINGS, option_columns

    variants = set(option_columns(runs)) - set(ESTIMATOR_SETTINGS)
    return [c for c in runs.columns if c in IDENTITY or c in variants]


def curve_groups(histories: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """(split, architecture, objective, variant values) → that figure's rows."""
    keys = ["split", "architecture", "objective", *_variant_columns_of(histories)]
    return [(k if isinstance(k, tuple) else (k,), g)
            for k, g in histories.groupby(keys, dropna=False, sort=True)]


def _variant_columns_of(histories: pd.DataFrame) -> list[str]:
    """The run keys (the columns before ``iteration``, :func:`collect_histories`) beyond
    :data:`IDENTITY` that differ; never a logged value (an objective's own, such as GRAE's
    ``log_det``, is a value, not a key)."""
    keys = list(histories.columns[:histories.columns.get_loc("iteration")])
    fixed = set(IDENTITY)
    if "dataset" in keys:  # the fingerprint only tells apart what dataset does
        fixed.add("dataset_fingerprint")
    return [c for c in keys if c not in fixed
            and histories[c].dropna().map(str).nunique() > 1]


def curve_name(key: tuple, rows: pd.DataFrame, used: set[str]) -> str:
    """``curves_<split>_<architecture>_<objective>[_<dataset>]`` (a number after it where
    other variants share the rest), for one figure of :func:`curve_groups`."""
    from analysis.plot_style import safe_name

    parts = list(key[:3])
    if "dataset" in rows.columns and rows["dataset"].nunique() == 1:
        parts.append(rows["dataset"].iloc[0])
    base = "curves_" + "_".join(safe_name(p) for p in parts)
    name, i = base, 2
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


@styled
def plot_training_curves(rows: pd.DataFrame, title: str, stem: Path) -> FigureResult:
    """Loss, D and R against iteration, one line per β (mean over seeds, ±1 std shaded);
    train solid, validation dashed where the runs had a validation set."""
    rows = rows[np.isfinite(rows["loss"].astype(float))]
    if rows.empty:
        return Skipped("no logged iterations with a finite loss")
    betas = sorted(rows["beta"].unique())
    cmap, norm = plt.get_cmap("viridis"), _beta_norm(betas)
    fig, axes = figure(1, len(CURVES), width=3.3, height=2.7, layout="constrained")
    validated = False
    for ax, (key, label) in zip(axes[0], CURVES, strict=True):
        for beta in betas:
            colour = cmap(norm(beta))
            at = rows[rows["beta"] == beta]
            _mean_band(ax, at, key, colour, "-")
            if f"val_{key}" in at and at[f"val_{key}"].notna().any():
                validated = True
                _mean_band(ax, at, f"val_{key}", colour, "--")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{label} (nats)")
        ax.set_title(label)
        if key == "loss" and _spans_decades(rows[key]):
            ax.set_yscale("symlog", linthresh=1.0)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(),
                       shrink=0.85, pad=0.01)
    bar.set_label("β")
    bar.ax.minorticks_off()
    bar.set_ticks(betas)
    bar.set_ticklabels([f"{b:g}" for b in betas])
    handles = [Line2D([], [], color="0.3", linestyle="-", label="train (window mean)")]
    if validated:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="validation"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    fig.suptitle(title)
    return save(fig, stem)


def _mean_band(ax: plt.Axes, rows: pd.DataFrame, column: str, colour: object,
               linestyle: str) -> None:
    """Mean over seeds per iteration, with ±1 std shaded (where there are several seeds)."""
    values = rows[["iteration", column]].dropna()
    if values.empty:
        return
    stats = values.groupby("iteration")[column].agg(["mean", "std"])
    x = stats.index.to_numpy()
    ax.plot(x, stats["mean"], color=colour, linestyle=linestyle, linewidth=1.1)
    if stats["std"].notna().any():
        std = stats["std"].fillna(0).to_numpy()
        ax.fill_between(x, stats["mean"] - std, stats["mean"] + std, color=colour, alpha=0.15,
                        linewidth=0)


def _beta_norm(betas: list[float]) -> mcolors.Normalize:
    lo, hi = min(betas), max(betas)
    if lo > 0 and hi > lo:
        return mcolors.LogNorm(lo, hi)
    return mcolors.Normalize(lo - 0.5, hi + 0.5)


def _spans_decades(values: pd.Series) -> bool:
    finite = values[np.isfinite(values.astype(float))].abs()
    return not finite.empty and finite.max() > 100 * max(finite.min(), 1.0)


STOPPING = ("best_iteration", "stopped", "iterations")


def stopping_table(runs: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Per run with a validation set: its keys (:func:`run_keys`), its best validation
    iteration and (patience) the iteration early stopping ended it, from ``status.json``."""
    from rdbench.io import json_or_none

    keys = run_keys(runs)
    rows = []
    for row in runs.drop_duplicates("run_id")[keys].itertuples(index=False):
        run = dict(zip(keys, row, strict=True))
        status = json_or_none(Path(runs_dir) / run["run_id"] / "status.json")
        if isinstance(status, dict) and "best_iteration" in status:
            rows.append({**run, "best_iteration": status["best_iteration"],
                         "stopped": status.get("stopped"),
                         "iterations": status.get("iteration", math.nan)})
    return pd.DataFrame(rows, columns=[*keys, *STOPPING])


@styled
def plot_rd_early_stopping(summary: pd.DataFrame, best: pd.DataFrame, stopping: pd.DataFrame,
                           split: str, architecture: str, stem: Path) -> FigureResult:
    """Bozkurt et al.'s appendix figure: the RD curves of the final weights beside those of
    each run's best validation checkpoint (early stopping), train and test, of one dataset
    (its tables, as :func:`analysis.report` makes them per dataset); the early-stopped points
    are labelled with β and the mean iteration over seeds their checkpoint is from, of the
    runs of the curve drawn (its objective and variant)."""
    from analysis.figures_rd import (
        _freeze_limits,
        _label_axes,
        _main,
        _marker_legend,
        draw_rd_curve,
        finish,
        rows_of_curve,
        split_label,
    )
    from analysis.plot_style import color

    def select(table: pd.DataFrame) -> pd.DataFrame:
        rows = _main(table) if not table.empty else table
        return rows[(rows["split"] == split) & (rows["architecture"] == architecture)]

    final, early = select(summary), select(best)
    if early.empty:
        return Skipped(f"no best-checkpoint metrics for {split} / {architecture} (train with "
                       "`validation = N`, then `rdbench evaluate --checkpoint best`)")
    drawn = rows_of_curve(stopping, early, [c for c in early.columns
                                            if c in stopping.columns and c != "beta"])
    iteration = drawn.groupby("beta")["best_iteration"].mean()
    fig, axes = figure(1, 2, width=3.7, height=3.3)
    for ax, set_name in zip(axes[0], ("train", "test"), strict=True):
        draw_rd_curve(ax, final[final["set"] == set_name], colour=color(0), label=None)
        rows = early[early["set"] == set_name].sort_values("beta")
        draw_rd_curve(ax, rows, colour=color(1), label=None, marker="s", linestyle="--")
        for k, r in enumerate(rows.itertuples()):  # neighbours' labels below / above
            if r.beta in iteration.index and np.isfinite(r.rate_mean):
                ax.annotate(f"{r.beta:g} @{_short(iteration[r.beta])}",
                            (r.rate_mean, r.distortion_mean),
                            xytext=(4, -9) if k % 2 == 0 else (4, 5),
                            textcoords="offset points", fontsize=6, color=color(1))
        ax.set_title(f"{set_name} set")
    _label_axes(list(axes[0]))
    _freeze_limits(list(axes[0]), share=True)
    handles = [Line2D([], [], color=color(0), marker="o", label="final weights"),
               Line2D([], [], color=color(1), marker="s", linestyle="--",
                      label="best validation checkpoint (labels: β @ iteration)")]
    finish(fig, handles + _marker_legend(), f"Early stopping · {split_label(summary, split)} · "
           f"{architecture}", ncol=2)
    return save(fig, stem)


def _short(iteration: float) -> str:
    """4500 -> '4.5k', 20000 -> '20k', 750 -> '750'."""
    if not np.isfinite(iteration):
        return "?"
    return f"{iteration / 1000:.3g}k" if iteration >= 1000 else f"{iteration:.0f}"
