"""Shared helpers of the Kumar & Poole analyses: runs, held-out images, posteriors, curvature.

Both analyses (``rdbench kp objectives``, ``rdbench kp jacobian``) read the finished β-VAE runs
(mean-field ``beta_vae`` and block-diagonal ``beta_vae_block``) of a runs directory, evaluate
each on a fixed seeded subset of its split's **test** set, and compare the encoder's Gaussian
posterior N(μ, Σ) with the decoder curvature A = JᵀHJ at μ (benchmark.implicit).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from imagesets.tensor import model_input
from rdbench.io import InputError, check_output_dir

KP_OBJECTIVES = ("beta_vae", "beta_vae_block")
IDENTITY = ("run_id", "dataset", "split", "architecture", "decoder", "latent_dim",
            "objective", "block_size", "beta", "seed")
# What tells runs apart besides β and seed: never averaged together.
GROUP = ("dataset", "split", "architecture", "decoder", "latent_dim", "block_size")


def block_size(config: dict) -> int:
    """Posterior block size of a run: 1 for mean-field β-VAE."""
    return int(config.get("objective_options", {}).get("block_size", 1))


def finished_vae_runs(runs_dir: str | Path) -> list[tuple[Path, dict]]:
    """(run_dir, config) of every finished β-VAE run (mean-field or block-diagonal), by β.

    :class:`InputError` when there is none, or when a finished run's ``config.json`` is
    damaged (:func:`analysis.evaluate.check_config`), before any work starts.
    """
    from analysis.evaluate import check_config
    from benchmark.runs import find_runs, read_config, read_status

    runs = []
    for run_dir in find_runs(runs_dir):
        if read_status(run_dir)["status"] != "done":
            continue
        config = check_config(run_dir, read_config(run_dir))
        if config["objective"] in KP_OBJECTIVES and (run_dir / "model.pt").exists():
            runs.append((run_dir, config))
    if not runs:
        raise InputError(f"no finished beta_vae / beta_vae_block runs in {runs_dir}")
    return sorted(runs, key=lambda rc: (_group(rc[1]), rc[1]["beta"], rc[1]["seed"]))


def identity(config: dict) -> dict[str, Any]:
    """The columns that name a run in the analyses' tables."""
    return {"run_id": config["run_id"], "dataset": Path(config["dataset"]).name,
            "split": config["split"], "architecture": config["architecture"],
            "decoder": decoder_label(config), "latent_dim": int(config["latent_dim"]),
            "objective": config["objective"], "block_size": block_size(config),
            "beta": float(config["beta"]), "seed": int(config["seed"])}


def decoder_label(config: dict) -> str:
    """``bernoulli``, ``gaussian σ=0.1`` or ``gaussian σ learned``: the run's likelihood."""
    kind, std = config.get("likelihood", "bernoulli"), config.get("decoder_std")
    if kind != "gaussian":
        return kind
    return f"gaussian σ={std:g}" if isinstance(std, (int, float)) else f"gaussian σ {std}"


def group_label(row: Any, columns: tuple[str, ...] = GROUP) -> str:
    """``cv-8192 · mlp1 · d=10 · b=2`` (dataset and decoder too): one group of runs."""
    parts = {"dataset": row["dataset"], "split": row["split"],
             "architecture": row["architecture"], "decoder": row["decoder"],
             "latent_dim": f"d={row['latent_dim']}", "block_size": f"b={row['block_size']}"}
    return " · ".join(str(parts[c]) for c in columns)


def varying(table: Any, columns: tuple[str, ...] = GROUP) -> tuple[str, ...]:
    """The group columns that differ between the table's runs (the rest go unsaid)."""
    shown = tuple(c for c in columns if table[c].nunique() > 1)
    return shown or ("split", "architecture")


def _group(config: dict) -> tuple:
    row = identity(config)
    return tuple(row[c] for c in GROUP)


def output_dir(args: argparse.Namespace, analysis: str) -> Path:
    """``--out`` (default RUNS_DIR/kp/ANALYSIS), validated up front: non-empty needs
    ``--force``, which replaces only an earlier output of the same analysis."""
    out = Path(args.out) if args.out else Path(args.runs_dir) / "kp" / analysis
    return check_output_dir(out, args.force, kind=f"kp-{analysis}", inputs=[args.runs_dir])


@functools.lru_cache(maxsize=4)
def _dataset(path: str) -> Any:
    """The dataset at ``path``, its checksums verified (as ``rdbench evaluate`` opens it)."""
    import imagesets

    return imagesets.load_verified(path)


def check_inputs(runs: list[tuple[Path, dict]]) -> None:
    """Before any work: every (dataset, split) the runs need opens and verifies, each run's
    ``dataset_fingerprint`` is its dataset's, and each ``model.pt`` loads."""
    from analysis.evaluate import check_fingerprint, check_model

    for dataset, split in sorted({(c["dataset"], c["split"]) for _, c in runs}):
        _dataset(dataset).split(split)
    for run_dir, config in runs:
        check_fingerprint(run_dir, config, _dataset(config["dataset"]))
        check_model(run_dir)


def held_out_images(config: dict, n: int, seed: int = 0) -> Tensor:
    """``n`` test images of the run's split (seeded uniform subset, sorted rows): (n, C, H, W).

    The same rows for every run of one split (the subset depends only on ``seed``), so runs
    are compared on identical held-out data.
    """
    data = _dataset(config["dataset"])
    rows = np.asarray(data.split(config["split"]).test)
    if n < len(rows):
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return model_input(data.images[rows])  # (n, C, H, W) in [0, 1]


def encoder_posterior(model: Any, config: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """The encoder's q(z|x) = N(μ, LLᵀ): μ (B, d), L (B, d, d) lower-triangular.

    Mean-field runs: L = diag(exp(½ log σ²)); others: their registered posterior (the same
    one ``rdbench evaluate`` uses).
    """
    from analysis.evaluate import posterior

    mu, logvar, scale_tril = posterior(config, model, x)
    return mu, torch.diag_embed(torch.exp(0.5 * logvar)) if scale_tril is None else scale_tril


def posterior_and_curvature(model: Any, config: dict, x: Tensor,
                            chunk: int = 64) -> dict[str, Tensor]:
    """Per test example: μ, L, logits at μ and A = JᵀHJ at μ, in chunks, without gradients.

    Returns float64 tensors ``mu`` (n, d), ``scale_tril`` (n, d, d), ``logits`` (n, D),
    ``A`` (n, d, d).
    """
    from benchmark.implicit import gauss_newton

    parts: dict[str, list[Tensor]] = {"mu": [], "scale_tril": [], "logits": [], "A": []}
    with torch.no_grad():
        for xb in x.split(chunk):
            mu, L = encoder_posterior(model, config, xb)
            logits, A = gauss_newton(model, mu)
            for key, value in zip(parts, (mu, L, logits, A), strict=True):
                parts[key].append(value.double().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}



def plot_vs_beta(table: Any, metrics: list[str], stem: Path, labels: dict[str, str]) -> list[Path]:
    """Panels (split rows × metric columns) of metric vs β (log axis), mean ± std over seeds;
    colour = posterior block size, line style = architecture. PNG + PDF at ``stem``."""
    from analysis.plot_style import LINESTYLES, MARKERS, beta_axis, color, figure, save, styled

    @styled
    def draw() -> list[Path]:
        rows_of = [c for c in varying(table) if c not in ("architecture", "block_size")]
        panels = (list(table.groupby(rows_of, sort=True)) if rows_of else [((), table)])
        fig, axes = figure(len(panels), len(metrics), width=3.2, height=2.6,
                           layout="constrained")
        blocks = sorted(table.block_size.unique())
        archs = sorted(table.architecture.unique())
        for r, (key, rows) in enumerate(panels):
            title = " · ".join(map(str, key if isinstance(key, tuple) else (key,)))
            for c, metric in enumerate(metrics):
                ax = axes[r, c]
                for (arch, b), g in rows.groupby(["architecture", "block_size"]):
                    s = g.groupby("beta")[metric].agg(["mean", "std"]).fillna(0.0)
                    i, j = blocks.index(b), archs.index(arch)
                    ax.errorbar(s.index, s["mean"], yerr=s["std"], color=color(i),
                                marker=MARKERS[i % len(MARKERS)],
                                linestyle=LINESTYLES[j % len(LINESTYLES)],
                                label=f"{arch}, b={b}" if (r, c) == (0, 0) else None)
                beta_axis(ax, table["beta"])
                ax.set_ylabel(labels.get(metric, metric))
                ax.set_title(title, fontsize=8)
        fig.legend(loc="outside lower center", ncol=min(4, len(blocks) * len(archs)))
        return save(fig, stem)

    return draw()
