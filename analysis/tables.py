"""Tidy tables of a runs directory: ``runs.csv`` (one row per run and set) and ``summary``.

``collect_runs`` reads only files (``config.json``, ``status.json``, ``metrics.json``); every
figure of the report is drawn from its DataFrame. Conventions (also in the README):

- Every run gives **two rows**, ``set = train`` and ``set = test``, whatever its status. A
  failed run (or a finished run without ``metrics.json``) keeps its two rows with NaN metrics
  and ``status`` ``failed`` / ``not_evaluated`` / ``pending`` / ``running`` /
  ``corrupt_config`` / ``corrupt_status`` / ``corrupt_metrics`` (a file that is not the
  JSON object it should be), so the table shows what is missing instead of hiding it.
- ``objective_options`` are flattened into columns of their own (e.g. ``block_size``);
  ``dataset_size`` is dropped there because it is ``n_train``. A training setting that
  differs between runs (``SETTINGS``: two grids trained into one runs directory, say with
  two learning rates) becomes such a column too, so its runs are never pooled as restarts;
  so does an estimator setting of ``metrics.json`` that differs between evaluated runs
  (``ESTIMATOR_SETTINGS``: runs evaluated with K = 256 and K = 32 are not averaged as seeds).
- ``summarise`` keeps only rows with ``status == "done"`` and a finite distortion, and gives
  mean, sample std (ddof = 1; NaN for a single seed) and the number of seeds per
  split × architecture × objective × options × β × set.
- Markdown / LaTeX numbers: |x| ≥ 10 with one decimal, otherwise 3 significant digits;
  ``mean ± std``; LaTeX is booktabs (a ``longtable`` past 40 rows).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rdbench.io import InputError, json_or_none

# n: examples evaluated; set_size: examples in the whole set (n < set_size with --max-examples)
METRICS = ("n", "set_size", "distortion", "rate", "elbo", "mutual_information", "marginal_kl",
           "log_px")
SUMMARY_METRICS = ("distortion", "rate", "elbo", "mutual_information", "marginal_kl", "log_px")
RUN_COLUMNS = ("run_id", "split", "architecture", "objective", "beta", "seed", "set", *METRICS,
               "status", "n_train")
KEYS = ("split", "architecture", "objective", "beta", "set")
SETS = ("train", "test")
METRIC_LABELS = {
    "distortion": "D", "rate": "R", "elbo": "ELBO", "mutual_information": "Î(x;z)",
    "marginal_kl": "KL(q(z)‖p(z))", "log_px": "log p(x)",
}
_DROPPED_OPTIONS = ("dataset_size",)
# Fields of a run id besides the keys, seed and options: a column only where they differ.
SETTINGS = ("dataset", "iterations", "learning_rate", "batch_size", "latent_dim",
            "likelihood", "decoder_std", "activation", "architecture_options", "validation",
            "validate_every", "patience", "precision", "dataset_fingerprint", "split_sha256")
# What those fields were before a grid could set them (runs of older versions).
_SETTING_DEFAULTS = {"likelihood": "bernoulli"}
METRICS_FILES = {"final": "metrics.json", "best": "metrics_best.json"}  # evaluate --checkpoint
# The fields of metrics.json's "settings" that change the numbers (not --batch-size, which
# provably does not): `rdbench evaluate` re-evaluates a run whose metrics have other values,
# and runs evaluated with different values get a column each here, like SETTINGS.
ESTIMATOR_SETTINGS = ("iwae_samples", "iwae_subset", "mi_batch", "max_examples")
UNRECORDED = "unrecorded"  # an estimator setting metrics.json does not state (older files)


def _run_dirs(runs_dir: Path) -> list[Path]:
    from benchmark.runs import find_runs

    return find_runs(runs_dir)


def _run_rows(run_dir: Path, checkpoint: str = "final") -> list[dict]:
    config = json_or_none(run_dir / "config.json")
    status_doc = json_or_none(run_dir / "status.json")  # None: absent (not started)
    if status_doc is None or isinstance(status_doc, dict):
        status = str((status_doc or {}).get("status", "pending"))
    else:
        status = "corrupt_status"
    if checkpoint != "final" and not (run_dir / "model_best.pt").is_file():
        return []  # trained without a validation set: no best checkpoint to show
    metrics = (json_or_none(run_dir / METRICS_FILES[checkpoint]) if status == "done"
               else None)
    if status == "done" and metrics is None:
        status = "not_evaluated"
    elif status == "done" and not isinstance(metrics, dict):
        status, metrics = "corrupt_metrics", None
    if not _valid_config(config):
        config, status, metrics = {}, "corrupt_config", None
    base = {k: config.get(k) for k in ("split", "architecture", "objective", "beta", "seed",
                                        "n_train")}
    base["run_id"] = config.get("run_id", run_dir.name)
    options = {k: _scalar(v) for k, v in (config.get("objective_options") or {}).items()
               if k not in _DROPPED_OPTIONS
               and k not in RUN_COLUMNS + SETTINGS + ESTIMATOR_SETTINGS}
    settings = {k: _scalar(config.get(k, _SETTING_DEFAULTS.get(k))) for k in SETTINGS}
    settings["dataset"] = Path(config["dataset"]).name if isinstance(config.get("dataset"),
                                                                      str) else None
    estimator = _estimator_settings(metrics)
    rows = []
    for set_name in SETS:
        values = (metrics or {}).get(set_name)
        values = values if isinstance(values, dict) else {}
        row = {**base, "set": set_name, "status": status, **options, **settings, **estimator}
        row.update({m: _as_float(values.get(m)) for m in METRICS})
        if math.isnan(row["set_size"]):  # metrics written without it evaluated the whole set
            row["set_size"] = row["n"]
        rows.append(row)
    return rows


def _estimator_settings(metrics: dict | None) -> dict[str, str | None]:
    """The ``ESTIMATOR_SETTINGS`` of a run's metrics as table cells: strings (``mi_batch``
    is a number or 'exact'), :data:`UNRECORDED` where the file does not state one (so older
    metrics are not pooled with newer ones); None for a run without metrics."""
    if metrics is None:
        return dict.fromkeys(ESTIMATOR_SETTINGS)
    recorded = metrics.get("settings")
    recorded = recorded if isinstance(recorded, dict) else {}
    return {k: str(_scalar(recorded[k])) if k in recorded else UNRECORDED
            for k in ESTIMATOR_SETTINGS}


def _valid_config(config: object) -> bool:
    """A config.json the tables can use: a dict with the keys and a numeric β."""
    if not isinstance(config, dict):
        return False
    if not all(isinstance(config.get(k), str) for k in ("split", "architecture", "objective")):
        return False
    return isinstance(config.get("beta"), (int, float)) and not isinstance(config["beta"], bool)


def _scalar(value: object) -> object:
    """Option values become table cells: lists and dicts as compact JSON (hashable)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def collect_runs(runs_dir: str | Path, checkpoint: str = "final") -> pd.DataFrame:
    """``runs.csv``: one row per run directory and set (``train``/``test``), sorted.

    ``checkpoint="best"``: the metrics of the runs' best validation checkpoints
    (``metrics_best.json``; runs trained without a validation set have no rows) — the
    report's early-stopped curves. Raises :class:`InputError` when ``runs_dir`` is missing
    or holds no run at all.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs directory not found: {runs_dir}")
    dirs = _run_dirs(runs_dir)
    if not dirs:
        raise InputError(f"no runs (directories with config.json) in {runs_dir}")
    rows = [row for d in dirs for row in _run_rows(d, checkpoint)]
    if not rows:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    df = pd.DataFrame(rows)
    varying = [*SETTINGS, *ESTIMATOR_SETTINGS]
    df = df.drop(columns=[c for c in varying if df[c].nunique(dropna=False) <= 1])  # if differ
    extra = sorted(c for c in df.columns if c not in RUN_COLUMNS)
    df = df[[*RUN_COLUMNS, *extra]]
    df["beta"] = df["beta"].astype(float)
    df["set"] = pd.Categorical(df["set"], categories=list(SETS))
    df = df.sort_values(["split", "architecture", "objective", *extra, "beta", "seed", "set"])
    df["set"] = df["set"].astype(str)
    return df.reset_index(drop=True)


def option_columns(df: pd.DataFrame) -> list[str]:
    """The flattened objective-option columns of a runs table (e.g. ``block_size``)."""
    return [c for c in df.columns if c not in RUN_COLUMNS]


def evaluated(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished runs that have metrics."""
    distortion = pd.to_numeric(df["distortion"], errors="coerce")  # (an empty table: object)
    return df[(df["status"] == "done") & np.isfinite(distortion)]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """``summary.csv``: mean/std over seeds per split × architecture × objective × β × set.

    Columns: the keys (objective options included), ``n_seeds``, ``n_train``, ``n``, then
    ``<metric>_mean`` and ``<metric>_std`` for every metric of ``SUMMARY_METRICS``.
    """
    keys = [*KEYS[:3], *option_columns(df), *KEYS[3:]]
    done = evaluated(df)
    if done.empty:
        raise InputError("no evaluated runs (status done with metrics.json)")
    grouped = done.groupby(keys, dropna=False, sort=True)
    out = grouped.agg(n_seeds=("seed", "nunique"), n_train=("n_train", "first"),
                      n=("n", "first"), set_size=("set_size", "first"))
    for m in SUMMARY_METRICS:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
    out = out.reset_index()
    set_order = out["set"].map({s: i for i, s in enumerate(SETS)})
    order = [*keys[:-1], "_set"]
    return out.assign(_set=set_order).sort_values(order).drop(columns="_set").reset_index(
        drop=True)


def format_number(x: float) -> str:
    """|x| ≥ 10: one decimal; otherwise 3 significant digits; NaN: an en dash."""
    if not np.isfinite(x):
        return "–" if np.isnan(x) else ("∞" if x > 0 else "−∞")
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def display_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings, one ``mean ± std`` column per metric (for Markdown/LaTeX/HTML)."""
    keys = [c for c in summary.columns
            if c not in ("n_seeds", "n_train", "n", "set_size")
            and not c.endswith(("_mean", "_std"))]
    out = pd.DataFrame({k: [format_cell(v) for v in summary[k]] for k in keys})
    out["seeds"] = [format_cell(v) for v in summary["n_seeds"]]
    for m in SUMMARY_METRICS:
        mean, std = summary[f"{m}_mean"], summary[f"{m}_std"]
        out[METRIC_LABELS[m]] = [_mean_std(a, b) for a, b in zip(mean, std, strict=True)]
    return out


def format_cell(value: object) -> str:
    """A key cell: missing as an en dash, whole floats without ``.0``, β as ``%g``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _mean_std(mean: float, std: float) -> str:
    if np.isnan(mean):
        return "–"
    return format_number(mean) if np.isnan(std) else f"{format_number(mean)} ± {format_number(std)}"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in table.itertuples(index=False)]
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(r) + " |" for r in cells)]) + "\n"


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "±": r"$\pm$", "–": "--",
                  "‖": r"$\|$", "Î": r"$\hat{I}$", "−": "$-$", "∞": r"$\infty$",
                  "≥": r"$\geq$", "≤": r"$\leq$", "|": r"\textbar{}", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "\\": r"\textbackslash{}"}


def _latex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, caption: str = "", long_after: int = 40) -> str:
    """Booktabs LaTeX of string cells (``\\usepackage{booktabs}``); a ``table`` float up to
    ``long_after`` rows, else a ``longtable`` (``\\usepackage{longtable}``) whose header
    repeats on every page."""
    n_keys = len(table.columns) - len(SUMMARY_METRICS)
    align = "l" * n_keys + "r" * len(SUMMARY_METRICS)
    head = [" & ".join(_latex(c) for c in table.columns) + r" \\", r"\midrule"]
    body = [" & ".join(_latex(str(c)) for c in row) + r" \\"
            for row in table.itertuples(index=False)]
    cap = [rf"\caption{{{_latex(caption)}}}"] if caption else []
    if len(table) <= long_after:
        lines = [r"\begin{table}[t]", r"\centering", r"\small",
                 rf"\begin{{tabular}}{{{align}}}", r"\toprule", *head, *body, r"\bottomrule",
                 r"\end{tabular}", *cap, r"\end{table}"]
    else:
        first = [c + r" \\" for c in cap]
        lines = [r"\begingroup\small", rf"\begin{{longtable}}{{{align}}}", *first, r"\toprule",
                 *head, r"\endfirsthead", r"\toprule", *head, r"\endhead", r"\bottomrule",
                 r"\endlastfoot", *body, r"\end{longtable}", r"\endgroup"]
    return "\n".join(lines) + "\n"
