"""``rdbench report RUNS_DIR [--out DIR] [--force]``: the tables and figures of SPEC §6.

Reads only files of RUNS_DIR (``config.json``, ``status.json``, ``metrics.json``,
``neighbours/<split>.npz``; for reconstructions also the dataset and ``model.pt``), and
writes, atomically (built in a staged sibling directory)::

    OUT/runs.csv  summary.csv  summary.md  summary.tex  report.md  index.html
    OUT/figures/<name>.png  <name>.pdf
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import figures
from analysis.html import Block, Figure, Heading, Paragraph, Table, to_html_page, to_markdown_page
from analysis.plot_style import FigureResult, Skipped, safe_name
from analysis.tables import (
    collect_runs,
    display_table,
    evaluated,
    format_cell,
    summarise,
    to_latex,
    to_markdown,
)
from rdbench.io import (
    InputError,
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    json_or_none,
    staged_directory,
    within,
)

TITLE = "rdbench report"


def main(args: argparse.Namespace) -> int:
    out = build_report(args.runs_dir, args.out, force=args.force)
    print(f"report: {out / 'index.html'} (and report.md, tables, figures/)")
    return 0


def build_report(runs_dir: str | Path, out_dir: str | Path | None = None,
                 force: bool = False) -> Path:
    """Write the report of ``runs_dir`` to ``out_dir`` (default ``RUNS_DIR/report``).

    Raises :class:`InputError` before writing anything when RUNS_DIR is missing or holds no
    evaluated run, or when ``out_dir`` is (or contains) RUNS_DIR, or is a non-empty directory
    other than an earlier report (which ``force`` replaces).
    """
    from analysis.curves import collect_histories, stopping_table

    runs_dir = Path(runs_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve() if out_dir else runs_dir / "report"
    runs = collect_runs(runs_dir)
    check_output_dir(out, force, kind="report", inputs=[runs_dir])
    summary = summarise(runs)
    best_runs = _with_dataset_columns(collect_runs(runs_dir, checkpoint="best"), runs)
    best = summarise(best_runs) if not evaluated(best_runs).empty else pd.DataFrame()
    histories, stopping = collect_histories(runs, runs_dir), stopping_table(runs, runs_dir)
    with staged_directory(out, force, kind="report") as tmp:
        _write_tables(runs, summary, tmp)
        _write_training_tables(best_runs, best, histories, stopping, tmp)
        views = _dataset_views(runs_dir, summary)
        blocks = _overview(runs, summary)
        blocks += _figure_blocks(runs, summary, runs_dir, views, tmp / "figures")
        blocks += _training_blocks(views, summary, best, histories, stopping,
                                   tmp / "figures")
        blocks += _kp_blocks(runs_dir, tmp / "figures")
        blocks += [Heading("Summary table"), Paragraph(_SUMMARY_NOTE),
                   Table(display_table(summary))]
        atomic_write_text(tmp / "report.md", to_markdown_page(TITLE, blocks, tmp))
        atomic_write_text(tmp / "index.html", to_html_page(TITLE, blocks))
    return out


def _write_training_tables(best_runs: pd.DataFrame, best: pd.DataFrame,
                           histories: pd.DataFrame, stopping: pd.DataFrame, out: Path) -> None:
    """history.csv (every run's training curve), and with validation sets stopping.csv and
    the best checkpoints' runs_best.csv / summary_best.csv."""
    if not histories.empty:
        atomic_write_text(out / "history.csv", histories.to_csv(index=False))
    if not stopping.empty:
        atomic_write_text(out / "stopping.csv", stopping.to_csv(index=False))
    if not evaluated(best_runs).empty:
        atomic_write_text(out / "runs_best.csv", best_runs.to_csv(index=False))
        atomic_write_text(out / "summary_best.csv", best.to_csv(index=False))


_SUMMARY_NOTE = ("Mean ± sample standard deviation over seeds (nats per example; ELBO and "
                 "log p(x) are log-likelihood bounds). |x| ≥ 10 with one decimal, else 3 "
                 "significant digits. Full precision in summary.csv.")


def _write_tables(runs: pd.DataFrame, summary: pd.DataFrame, out: Path) -> None:
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    shown = display_table(summary)
    atomic_write_text(out / "summary.md", to_markdown(shown))
    atomic_write_text(out / "summary.tex", to_latex(shown, caption=_SUMMARY_NOTE))


def _overview(runs: pd.DataFrame, summary: pd.DataFrame) -> list[Block]:
    per_run = runs.drop_duplicates("run_id")
    counts = per_run["status"].value_counts().to_dict()
    text = (f"{len(per_run)} runs ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
            f"splits: {', '.join(sorted(summary['split'].unique()))}; architectures: "
            f"{', '.join(sorted(summary['architecture'].unique()))}; objectives: "
            f"{', '.join(sorted(summary['objective'].unique()))}; "
            f"β: {', '.join(f'{b:g}' for b in sorted(summary['beta'].unique()))}.")
    blocks: list[Block] = [Heading("Overview"), Paragraph(text)]
    missing = per_run[per_run["status"] != "done"]
    if not missing.empty:
        blocks.append(Paragraph("Runs without metrics: " + ", ".join(
            f"{r.run_id} ({r.status})" for r in missing.itertuples()) + "."))
    return blocks


# ---------------------------------------------------------------- figures
def _pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    main = summary[summary["objective"] == figures.main_objective(summary)]
    return sorted(set(zip(main["split"], main["architecture"], strict=True)))


def _draw(name: str, caption: str, draw: Callable[[Path], FigureResult], out: Path) -> Figure:
    """Draw one figure; an unexpected error becomes a note (and a warning) for that figure."""
    try:
        result = draw(out / safe_name(name))
    except Exception as e:  # broad on purpose: one broken figure must not lose the report
        print(f"rdbench report: warning: {name} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        result = Skipped(f"failed ({type(e).__name__}: {e})")
    return Figure(name, caption, result)


def _figure_blocks(runs: pd.DataFrame, summary: pd.DataFrame, runs_dir: Path,
                   views: list[_DatasetView], out: Path) -> list[Block]:
    """The figures of every dataset of the runs (a section each when there are several),
    then Bozkurt et al.'s Fig. 7 across them."""
    neighbours, notes = figures.load_neighbours(runs_dir)
    for note in notes:
        print(f"rdbench report: warning: neighbours: {note}", file=sys.stderr)
    blocks: list[Block] = [Paragraph(f"Note: {n}") for n in notes]
    for view in views:
        if len(views) > 1:
            blocks.append(Heading(f"Dataset {view.name}"))
        blocks += _dataset_section(view, _of(runs, view), _of(summary, view), runs_dir,
                                   figures.neighbours_of(neighbours, view.fingerprint),
                                   out, suffix=_suffix(view, views))
    if len(views) > 1:
        per_dataset = {view.name: _of(summary, view) for view in views}
        blocks += [Heading("Across datasets (Bozkurt et al. Fig. 7)"),
                   _draw("rd_datasets", _DATASETS,
                         lambda s: figures.plot_rd_datasets(per_dataset, s), out)]
    return blocks


def _suffix(view: _DatasetView, views: list[_DatasetView]) -> str:
    """``_<dataset>`` in the names of a dataset's figures when the runs are on several."""
    return f"_{view.name}" if len(views) > 1 else ""


@dataclass
class _DatasetView:
    """One dataset of the runs: its label, fingerprint, and what the figures need of it."""

    name: str
    fingerprint: str | None
    data: object = None
    note: str | None = None


def _dataset_views(runs_dir: Path, summary: pd.DataFrame) -> list[_DatasetView]:
    """The datasets the runs were trained on, from their config.json (each loaded and
    verified against the runs' fingerprint for the image figures; a note where it cannot
    be)."""
    from benchmark.runs import find_runs

    seen: dict[str | None, tuple[str, str]] = {}
    for run_dir in find_runs(runs_dir):
        config = json_or_none(run_dir / "config.json")
        if isinstance(config, dict) and isinstance(config.get("dataset"), str):
            seen.setdefault(config.get("dataset_fingerprint"),
                            (Path(config["dataset"]).name, config["dataset"]))
    if not seen:
        return [_DatasetView("dataset", None, note="no dataset path in the runs' config.json")]
    names = [name for name, _ in seen.values()]
    views = []
    for fingerprint, (name, path) in sorted(seen.items(), key=lambda kv: kv[1]):
        label = name if names.count(name) == 1 else f"{name}-{(fingerprint or '?')[:6]}"
        data, note = _load_checked(path, fingerprint)
        views.append(_DatasetView(label, fingerprint, data, note))
    return views


def _with_dataset_columns(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``table`` (the best checkpoints' runs, a subset of ``runs``) with the columns that
    tell datasets apart in ``runs``: it drops them where its own runs are on one dataset,
    and :func:`_of` needs them to tell which one."""
    missing = [c for c in ("dataset", "dataset_fingerprint")
               if c in runs.columns and c not in table.columns]
    if not missing:
        return table
    ids = runs.drop_duplicates("run_id").set_index("run_id")[missing]
    return table.join(ids, on="run_id")


def _of(table: pd.DataFrame, view: _DatasetView) -> pd.DataFrame:
    """The rows of ``table`` on ``view``'s dataset, without the columns that tell datasets
    apart (the same on every row left)."""
    if "dataset_fingerprint" in table.columns and view.fingerprint is not None:
        table = table[table["dataset_fingerprint"] == view.fingerprint]
    elif "dataset" in table.columns:
        table = table[table["dataset"] == view.name]
    return table.drop(columns=[c for c in ("dataset", "dataset_fingerprint")
                               if c in table.columns])


def _load_checked(path: str, fingerprint: str | None) -> tuple[object, str | None]:
    """(the dataset, None), or (None, why not): missing, damaged, or not the runs' data."""
    try:
        data = _load_dataset(path)
    except (ImportError, AttributeError, InputError, OSError) as e:
        return None, f"dataset {path} unavailable ({type(e).__name__}: {e})"
    if fingerprint and getattr(data, "fingerprint", fingerprint) != fingerprint:
        return None, (f"dataset {path} is not the one the runs were trained on (its "
                      "fingerprint differs)")
    return data, None


def _dataset_section(view: _DatasetView, runs: pd.DataFrame, summary: pd.DataFrame,
                     runs_dir: Path, neighbours: dict, out: Path, suffix: str) -> list[Block]:
    """Fig. 1–6 and 8 of one dataset (``suffix`` in the figure names when there are several)."""
    loader = _model_loader() if view.data is not None else None
    images = getattr(view.data, "images", None)
    blocks: list[Block] = [Heading("Rate–distortion curves (paper Fig. 3)"), Paragraph(_RD)]
    if view.note:
        blocks.append(Paragraph(f"Note: {view.note}"))
    for split, arch in tqdm(_pairs(summary), desc="report figures", disable=None):
        def recon(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_reconstructions(runs, split, arch, neighbours, images, loader,
                                                runs_dir, stem)

        def rd(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_rd(summary, split, arch, stem)

        blocks += [Heading(f"{split} · {arch}", level=3),
                   _draw(f"reconstructions_{split}_{arch}{suffix}", _RECON, recon, out),
                   _draw(f"rd_{split}_{arch}{suffix}", f"Train and test RD curves, {split} · "
                         f"{arch}.", rd, out)]
    blocks += _comparison_blocks(summary, out, suffix)
    blocks.append(Heading("Rate decomposition (paper Fig. 8)"))
    for split, arch in _pairs(summary):
        def mi_kl(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_mi_kl(summary, split, arch, stem)

        blocks.append(_draw(f"mi_kl_{split}_{arch}{suffix}", _MIKL, mi_kl, out))
    blocks += [Heading("Split difficulty"),
               _draw(f"nn_distances{suffix}", _NN,
                     lambda s: figures.plot_nn_distances(neighbours, s), out)]
    return blocks + _dataset_blocks(view, sorted(summary["split"].unique()), out, suffix)


def _training_blocks(views: list[_DatasetView], summary: pd.DataFrame, best: pd.DataFrame,
                     histories: pd.DataFrame, stopping: pd.DataFrame,
                     out: Path) -> list[Block]:
    """Training curves per split × architecture × objective, and where runs had a validation
    set the early-stopped RD curves beside the final ones with their stopping iterations."""
    from analysis.curves import curve_groups, curve_name, plot_training_curves

    blocks: list[Block] = []
    if not best.empty:  # the best checkpoints' summary
        blocks += [Heading("Early stopping (Bozkurt et al., appendix)"), Paragraph(_EARLY)]
        for view in views:
            blocks += _early_stopping_blocks(view, _of(summary, view), _of(best, view),
                                             _of(stopping, view), out, _suffix(view, views))
    if histories.empty:
        return blocks
    blocks += [Heading("Training curves"), Paragraph(_CURVES)]
    used: set[str] = set()
    for key, rows in curve_groups(histories):
        label = " · ".join(str(k) for k in key)
        name = curve_name(key, rows, used)

        def curves(stem: Path, rows: pd.DataFrame = rows, label: str = label) -> FigureResult:
            return plot_training_curves(rows, f"Training curves · {label}", stem)

        blocks.append(_draw(name, f"Objective, D and R against iteration, {label}.", curves,
                            out))
    return blocks


def _early_stopping_blocks(view: _DatasetView, summary: pd.DataFrame, best: pd.DataFrame,
                           stopping: pd.DataFrame, out: Path, suffix: str) -> list[Block]:
    """One dataset's early-stopping figures (``suffix`` in their names when there are
    several datasets) and stopping table; nothing for a dataset without a validation set."""
    from analysis.curves import plot_rd_early_stopping

    if best.empty and stopping.empty:
        return []
    blocks: list[Block] = [Heading(f"Dataset {view.name}", level=3)] if suffix else []
    for split, arch in _pairs(best) if not best.empty else []:
        def early(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return plot_rd_early_stopping(summary, best, stopping, split, arch, stem)

        blocks.append(_draw(f"rd_early_stopping_{split}_{arch}{suffix}", _EARLY_FIG, early,
                            out))
    return [*blocks, Table(_stopping_display(stopping))] if not stopping.empty else blocks


def _stopping_display(stopping: pd.DataFrame) -> pd.DataFrame:
    """Per split × architecture × objective × variant × β: the mean iteration of the best
    validation checkpoint (± std over seeds) and how many runs early stopping ended."""
    from analysis.curves import IDENTITY, STOPPING

    variants = [c for c in stopping.columns if c not in (*IDENTITY, *STOPPING)]
    keys = ["split", "architecture", "objective", *variants, "beta"]
    grouped = stopping.groupby(keys, sort=True, dropna=False)
    table = grouped.agg(best=("best_iteration", "mean"), std=("best_iteration", "std"),
                        seeds=("seed", "nunique"),
                        stopped=("stopped", lambda s: int(s.notna().sum()))).reset_index()
    table["best checkpoint (iteration)"] = [
        f"{m:,.0f}" + ("" if np.isnan(sd) else f" ± {sd:,.0f}")
        for m, sd in zip(table["best"], table["std"], strict=True)]
    for key in ("beta", *variants):
        table[key] = [format_cell(v) for v in table[key]]
    return table[[*keys, "best checkpoint (iteration)", "seeds", "stopped"]].rename(
        columns={"stopped": "stopped early"})


# (analysis, figure stem, caption): the figures `rdbench kp` writes into RUNS_DIR/kp/<analysis>
_KP_FIGURES = (
    ("objectives", "objectives", "β-VAE objective (Monte Carlo), its Taylor approximation "
     "(eq. 7) and GRAE (eq. 12) on held-out images against β, and their differences to the "
     "β-VAE objective (Kumar & Poole Fig. 3); from `rdbench kp objectives`."),
    ("jacobian", "jacobian_heatmaps", "Encoder precision Σ⁻¹ beside I + JᵀHJ/β, both in "
     "correlation form, for a few β and block sizes (Kumar & Poole Fig. 2); from "
     "`rdbench kp jacobian`."),
    ("jacobian", "jacobian_alignment", "Alignment of Σ⁻¹ with I + JᵀHJ/β, off-block leakage "
     "and the KL gap against β; from `rdbench kp jacobian`."),
)


def _kp_blocks(runs_dir: Path, out: Path) -> list[Block]:
    """The `rdbench kp` figures found under RUNS_DIR/kp, copied in (plotting reads, never
    recomputes); a note naming the command for each one not made yet."""
    blocks: list[Block] = [Heading("Implicit regularisation (Kumar & Poole 2020)")]
    for analysis, stem, caption in _KP_FIGURES:
        source = runs_dir / "kp" / analysis

        def copy(target: Path, source: Path = source, stem: str = stem,
                 analysis: str = analysis) -> FigureResult:
            found = [source / f"{stem}{ext}" for ext in (".png", ".pdf")]
            outside = [f for f in found if f.exists() and not within(f, runs_dir)]
            if outside:
                return _skip_outside(outside[0], runs_dir)
            if not found[0].is_file():
                return Skipped(f"not made yet: run `rdbench kp {analysis} RUNS_DIR`")
            copied = []
            for path in (f for f in found if f.is_file()):
                copied.append(atomic_write_bytes(target.with_suffix(path.suffix),
                                                 path.read_bytes()))
            return copied

        blocks.append(_draw(f"kp_{stem}", caption, copy, out))
    return blocks


def _skip_outside(path: Path, runs_dir: Path) -> Skipped:
    """A file of RUNS_DIR that links outside it is never read (it could be any file of the
    user's, a key or a password, inlined into index.html): a warning and a note instead."""
    why = f"{path} is a symbolic link to a file outside {runs_dir}; not read"
    print(f"rdbench report: warning: {why}", file=sys.stderr)
    return Skipped(f"skipped: {why}")


def _comparison_blocks(summary: pd.DataFrame, out: Path, suffix: str = "") -> list[Block]:
    """Fig. 4, 5, 6 and the objectives: one figure each, a note when their splits are absent."""
    specs = [("Training-set size (paper Fig. 4)", "rd_sizes", _SIZES, figures.plot_rd_sizes),
             ("CV 82k vs CV 16k vs checkerboard (paper Fig. 5)", "rd_cv82_cv16_checkerboard",
              _SPLITS, figures.plot_rd_splits),
             ("MLP vs CNN (paper Fig. 6)", "rd_mlp_vs_cnn", _ARCH, figures.plot_rd_mlp_vs_cnn),
             ("Objectives (Kumar & Poole 2020)", "rd_objectives", _OBJ,
              figures.plot_rd_objectives)]
    blocks: list[Block] = []
    for heading, name, caption, plot in specs:
        blocks += [Heading(heading),
                   _draw(f"{name}{suffix}", caption, lambda s, plot=plot: plot(summary, s), out)]
    return blocks


def _dataset_blocks(view: _DatasetView, splits: list[str], out: Path,
                    suffix: str = "") -> list[Block]:
    blocks: list[Block] = [Heading("Dataset (paper Fig. 1, 2)")]
    data = view.data
    if data is None:
        return [*blocks, Paragraph(f"Dataset figures skipped: {view.note}")]
    kind = getattr(data, "kind", "the")
    blocks += [_draw(f"dataset_samples{suffix}", f"Samples of the {kind} dataset (paper Fig. 1).",
                     lambda s: figures.plot_dataset_samples(data, s), out),
               _draw(f"splits_paper{suffix}", "The paper's four splits in two factors (paper "
                     "Fig. 2).", lambda s: figures.plot_paper_splits(data, s), out)]
    blocks += [_draw(f"split_{split}{suffix}", f"The {split} split in two factors (train vs "
                     "test).", lambda s, p=split: figures.plot_split_picture(data, p, s), out)
               for split in splits]
    return blocks


def _load_dataset(path: str) -> object:
    import imagesets

    return imagesets.load_verified(path)


def _model_loader() -> Callable[[Path], object]:
    from benchmark.runs import load_model

    return load_model


_RD = ("Train (left) and test (right) RD curves of the β-VAE: mean over seeds with ±1 std "
       "bars in rate and distortion, points joined in β order and labelled with β, β = 1 "
       "starred; dashed diagonals are iso-ELBO lines D + R = const.")
_RECON = ("The hard test example (90th percentile of the distance to its nearest training "
          "image), that training image, and one seed's reconstruction per β (decoder mean at "
          "the posterior mean).")
_SIZES = ("Test RD curves across training-set sizes: constant volume (CV, sparser test) "
          "and constant density (CD) splits, one column per architecture; β = 1 starred.")
_SPLITS = ("CV (82k/82k), CV (16k/147k) and checkerboard splits: test solid, train dashed.")
_ARCH = "MLP vs CNN architectures on the same split: train (left) and test (right)."
_OBJ = ("Objectives on the test RD plane per split and architecture (GRAE models via their "
        "implied posterior; deterministic autoencoders as a dotted line at their distortion).")
_MIKL = ("Rate decomposition R = Î(x;z) + KL(q(z)‖p(z)) against β, train dashed and test "
         "solid; Î is bounded by log N (dash-dot: N_train, dotted: N_test).")
_DATASETS = ("Test RD curves of the β-VAE on each dataset's split, one curve per architecture "
             "(1-layer vs 3-layer networks); β = 1 starred.")
_EARLY = ("Every run with a validation set kept the weights of its lowest validation loss "
          "(model_best.pt); `rdbench evaluate --checkpoint best` placed them on the RD plane. "
          "Bozkurt et al. (appendix) report that with early stopping the 1-layer RD curve "
          "becomes monotonic again.")
_EARLY_FIG = ("Final weights (solid) and the best validation checkpoints (dashed), train and "
              "test; each early-stopped point is labelled with β and the mean iteration of its "
              "checkpoint over seeds.")
_CURVES = ("Per β (colour), the training objective, distortion and rate against iteration: "
           "the mean over seeds of each logging window, ±1 std shaded; dashed: the same on the "
           "held-out validation set, where the runs had one.")
_NN = ("ℓ₂ pixel distance from each evaluated test image to its nearest training image, per "
       "split; stars mark the hard example shown in the reconstructions.")
