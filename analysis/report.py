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
    runs_dir = Path(runs_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve() if out_dir else runs_dir / "report"
    runs = collect_runs(runs_dir)
    check_output_dir(out, force, kind="report", inputs=[runs_dir])
    summary = summarise(runs)
    with staged_directory(out, force, kind="report") as tmp:
        _write_tables(runs, summary, tmp)
        blocks = _overview(runs, summary)
        blocks += _figure_blocks(runs, summary, runs_dir, tmp / "figures")
        blocks += [Heading("Summary table"), Paragraph(_SUMMARY_NOTE),
                   Table(display_table(summary))]
        atomic_write_text(tmp / "report.md", to_markdown_page(TITLE, blocks, tmp))
        atomic_write_text(tmp / "index.html", to_html_page(TITLE, blocks))
    return out


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
                   out: Path) -> list[Block]:
    neighbours, notes = figures.load_neighbours(runs_dir)
    for note in notes:
        print(f"rdbench report: warning: neighbours: {note}", file=sys.stderr)
    data, images, loader, data_note = _dataset_and_models(runs_dir)
    blocks: list[Block] = [Heading("Rate–distortion curves (paper Fig. 3)"), Paragraph(_RD)]
    blocks += [Paragraph(f"Note: {n}") for n in notes + ([data_note] if data_note else [])]
    for split, arch in tqdm(_pairs(summary), desc="report figures", disable=None):
        def recon(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_reconstructions(runs, split, arch, neighbours, images, loader,
                                                runs_dir, stem)

        def rd(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_rd(summary, split, arch, stem)

        blocks += [Heading(f"{split} · {arch}", level=3),
                   _draw(f"reconstructions_{split}_{arch}", _RECON, recon, out),
                   _draw(f"rd_{split}_{arch}", f"Train and test RD curves, {split} · {arch}.",
                         rd, out)]
    blocks += _comparison_blocks(summary, out)
    blocks.append(Heading("Rate decomposition (paper Fig. 8)"))
    for split, arch in _pairs(summary):
        def mi_kl(stem: Path, split: str = split, arch: str = arch) -> FigureResult:
            return figures.plot_mi_kl(summary, split, arch, stem)

        blocks.append(_draw(f"mi_kl_{split}_{arch}", _MIKL, mi_kl, out))
    blocks += [Heading("Split difficulty"),
               _draw("nn_distances", _NN, lambda s: figures.plot_nn_distances(neighbours, s), out)]
    blocks += _kp_blocks(runs_dir, out)
    return blocks + _dataset_blocks(data, data_note, sorted(summary["split"].unique()), out)


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


def _comparison_blocks(summary: pd.DataFrame, out: Path) -> list[Block]:
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
                   _draw(name, caption, lambda s, plot=plot: plot(summary, s), out)]
    return blocks


def _dataset_blocks(data: object, note: str | None, splits: list[str], out: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Dataset (paper Fig. 1, 2)")]
    if data is None:
        return [*blocks, Paragraph(f"Dataset figures skipped: {note}")]
    blocks += [_draw("dataset_samples", "Samples of the Tetrominoes dataset (paper Fig. 1).",
                     lambda s: figures.plot_dataset_samples(data, s), out),
               _draw("splits_paper", "The paper's four splits in two factors (paper Fig. 2).",
                     lambda s: figures.plot_paper_splits(data, s), out)]
    blocks += [_draw(f"split_{split}", f"The {split} split in two factors (train vs test).",
                     lambda s, p=split: figures.plot_split_picture(data, p, s), out)
               for split in splits]
    return blocks


def _dataset_path(runs_dir: Path) -> tuple[str, str | None] | None:
    """(dataset path, its fingerprint) from the first readable config.json, else None."""
    from benchmark.runs import find_runs

    for run_dir in find_runs(runs_dir):
        config = json_or_none(run_dir / "config.json")
        if isinstance(config, dict) and isinstance(config.get("dataset"), str):
            return config["dataset"], config.get("dataset_fingerprint")
    return None


def _load_dataset(path: str) -> object:
    import tetrominoes

    return tetrominoes.load(path)


def _model_loader() -> Callable[[Path], object]:
    from benchmark.runs import load_model

    return load_model


def _dataset_and_models(runs_dir: Path) -> tuple[object, np.ndarray | None,
                                                  Callable[[Path], object] | None, str | None]:
    """(dataset, its images, a model loader, a note); None where unavailable."""
    found = _dataset_path(runs_dir)
    if found is None:
        return None, None, None, "no dataset path in the runs' config.json"
    path, fingerprint = found
    try:
        data = _load_dataset(path)
    except (ImportError, AttributeError, InputError, OSError) as e:
        return None, None, None, f"dataset {path} unavailable ({type(e).__name__}: {e})"
    if fingerprint and getattr(data, "fingerprint", fingerprint) != fingerprint:
        return None, None, None, (f"dataset {path} is not the one the runs were trained on "
                                  "(its fingerprint differs)")
    try:
        loader = _model_loader()
    except (ImportError, AttributeError) as e:
        return data, data.images, None, f"model loader unavailable ({e})"
    return data, data.images, loader, None


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
_NN = ("ℓ₂ pixel distance from each evaluated test image to its nearest training image, per "
       "split; stars mark the hard example shown in the reconstructions.")
