"""``rdbench kp jacobian RUNS_DIR``: posterior precision vs I + JᵀHJ/β (Kumar & Poole Fig. 2).

Their eq. 11 says the β-VAE posterior covariance that is optimal for the second-order
(Taylor) objective is Σ* = (I + A/β)⁻¹, A = JᵀHJ the decoder's Gauss–Newton matrix at the
posterior mean (Bernoulli: H = diag(σ(1−σ)) of the output probabilities). For each finished
β-VAE run (mean-field and block-diagonal) and held-out test points we compare the encoder's
precision P = Σ⁻¹ with Q = I + A/β by

- ``alignment`` = ⟨C_P, C_Q⟩_F / (‖C_P‖_F ‖C_Q‖_F), C_M = diag(M)^-½ M diag(M)^-½: cosine
  similarity of the two matrices scaled to unit diagonal (correlation form). 1 iff P and Q
  have the same correlation structure; for a diagonal P it is 1/√(1 + Σ_{i≠j} C_Q,ij²/d), i.e.
  it measures how diagonal Q is, as eq. 11 predicts for mean-field posteriors.
- ``leakage`` = mean of C_Q,ij² over the pairs (i, j) *outside* the posterior's diagonal
  blocks: 0 when Q has the block structure the posterior imposes.
- ``log_diag_error`` = meanᵢ |log P_ii − log Q_ii|: do the scales agree?
- ``kl_gap`` = KL(N(0, Σ) ‖ N(0, Q⁻¹)) = ½(tr(QΣ) − d − log det(QΣ)) ≥ 0, 0 iff P = Q; β·kl_gap
  is exactly the gap between the Taylor objective (eq. 7) and GRAE (eq. 12).

Scores are per test point, averaged over the points of each run (``*_std`` across points).
Outputs in ``--out`` (default RUNS_DIR/kp/jacobian): ``jacobian.csv`` (one row per run),
``jacobian_summary.csv`` (mean/std over seeds), ``jacobian_matrices.npz``, figures
``jacobian_heatmaps`` and ``jacobian_alignment`` (PNG + PDF).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from analysis.kp import common
from benchmark.runs import load_model
from rdbench.device import resolve_device
from rdbench.io import InputError, atomic_write, atomic_write_text, staged_directory

N_SHOW = 2  # test points shown in the heat maps


def unit_diagonal(M: Tensor) -> Tensor:
    """diag(M)^-½ M diag(M)^-½ for SPD M (..., d, d)."""
    s = torch.diagonal(M, dim1=-2, dim2=-1).rsqrt()
    return M * s.unsqueeze(-1) * s.unsqueeze(-2)


def alignment(P: Tensor, Q: Tensor) -> Tensor:
    """Cosine similarity of P and Q in correlation form: (..., d, d) × 2 → (...)."""
    Cp, Cq = unit_diagonal(P), unit_diagonal(Q)
    return (Cp * Cq).sum((-2, -1)) / (Cp.norm(dim=(-2, -1)) * Cq.norm(dim=(-2, -1)))


def block_mask(d: int, b: int) -> Tensor:
    """(d, d) bool, True inside the b × b diagonal blocks."""
    k = torch.arange(d) // b
    return k.unsqueeze(0) == k.unsqueeze(1)


def leakage(Q: Tensor, b: int) -> Tensor:
    """Mean squared correlation of Q outside the diagonal b-blocks (NaN if b = d): (...)."""
    outside = ~block_mask(Q.shape[-1], b)
    return unit_diagonal(Q)[..., outside].square().mean(-1)


def log_diag_error(P: Tensor, Q: Tensor) -> Tensor:
    """meanᵢ |log P_ii − log Q_ii|: (...)."""
    diag = lambda M: torch.diagonal(M, dim1=-2, dim2=-1)  # noqa: E731
    return (diag(P).log() - diag(Q).log()).abs().mean(-1)


def kl_gap(sigma: Tensor, Q: Tensor) -> Tensor:
    """KL(N(0, Σ) ‖ N(0, Q⁻¹)) = ½(tr(QΣ) − d − log det(QΣ)): (...)."""
    QS = Q @ sigma
    trace = torch.diagonal(QS, dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (trace - Q.shape[-1] - torch.logdet(Q) - torch.logdet(sigma))


def precision_pair(stats: dict[str, Tensor], beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder covariance Σ = LLᵀ, its precision P = Σ⁻¹, and Q = I + A/β, all (n, d, d)."""
    L = stats["scale_tril"]
    sigma = L @ L.transpose(-2, -1)
    eye = torch.eye(L.shape[-1], dtype=L.dtype)
    return sigma, torch.cholesky_inverse(L), eye + stats["A"] / beta


def run_scores(stats: dict[str, Tensor], beta: float, b: int) -> dict[str, float]:
    """The four scores of the module docstring, mean and std over the test points."""
    sigma, P, Q = precision_pair(stats, beta)
    values = {"alignment": alignment(P, Q), "leakage": leakage(Q, b),
              "log_diag_error": log_diag_error(P, Q), "kl_gap": kl_gap(sigma, Q)}
    row: dict[str, float] = {}
    for key, v in values.items():
        row[key], row[f"{key}_std"] = float(v.mean()), float(v.std()) if len(v) > 1 else 0.0
    return row


def summarise(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per dataset × split × architecture × decoder × latent size ×
    block size × β."""
    keys = [*common.GROUP, "beta"]
    grouped = table.groupby(keys)[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    return out.join(grouped.size().rename("n_seeds")).reset_index()


def main(args: argparse.Namespace) -> int:
    out = common.output_dir(args, "jacobian")
    if args.examples < 1:
        raise InputError(f"--examples must be >= 1, got {args.examples}")
    runs = common.finished_vae_runs(args.runs_dir)
    common.check_inputs(runs)
    device = resolve_device(args.device)
    rows, matrices = [], {}
    for run_dir, config in tqdm(runs, desc="kp jacobian", disable=None):
        model = load_model(run_dir, device=device)
        x = common.held_out_images(config, args.examples).to(device)
        stats = common.posterior_and_curvature(model, config, x)
        rows.append({**common.identity(config), "n": len(x),
                     **run_scores(stats, config["beta"], common.block_size(config))})
        _, P, Q = precision_pair(stats, config["beta"])
        matrices[config["run_id"]] = (P[:N_SHOW].numpy(), Q[:N_SHOW].numpy())
    table = pd.DataFrame(rows)
    _write(out, args.force, table, matrices)
    print(f"kp jacobian: {len(table)} runs -> {out}")
    return 0


def _write(out, force: bool, table: pd.DataFrame, matrices: dict) -> None:
    metrics = ["alignment", "leakage", "log_diag_error", "kl_gap"]
    with staged_directory(out, force, kind="kp-jacobian") as tmp:
        atomic_write_text(tmp / "jacobian.csv", table.to_csv(index=False))
        atomic_write_text(tmp / "jacobian_summary.csv",
                          summarise(table, metrics).to_csv(index=False))
        arrays = {f"{k}_{name}": m for k, pair in matrices.items()
                  for name, m in zip(("precision", "q"), pair, strict=True)}
        atomic_write(tmp / "jacobian_matrices.npz", lambda f: np.savez(f, **arrays))
        shown = _heatmap_runs(table)
        plot_heatmaps(shown, matrices, tmp / "jacobian_heatmaps")
        common.plot_vs_beta(table, ["alignment", "leakage", "kl_gap"], tmp / "jacobian_alignment",
                            labels=_LABELS)


_Q = r"I + J^\top HJ/\beta"
_LABELS = {"alignment": "alignment (correlation cosine)",
           "leakage": rf"off-block corr.$^2$ of ${_Q}$",
           "kl_gap": rf"KL$(\Sigma\,\|\,({_Q})^{{-1}})$ [nats]"}
_PANELS = (r"$\Sigma^{-1}$ (encoder)", rf"${_Q}$")


def _heatmap_runs(table: pd.DataFrame, max_betas: int = 4) -> pd.DataFrame:
    """Runs shown as heat maps: first split × architecture, lowest seed, ≤ 4 spread-out β per
    block size (≤ 3 block sizes)."""
    first = table.iloc[0]
    same = [c for c in common.GROUP if c != "block_size"]
    sub = table[(table[same] == first[same]).all(axis=1)]
    sub = sub[sub.seed == sub.seed.min()]
    picked = []
    for _, group in list(sub.groupby("block_size"))[:3]:
        group = group.sort_values("beta")
        idx = np.unique(np.linspace(0, len(group) - 1, min(max_betas, len(group))).round())
        picked.append(group.iloc[idx.astype(int)])
    return pd.concat(picked)


def plot_heatmaps(shown: pd.DataFrame, matrices: dict, stem) -> list:
    """Rows: runs (block size, β); columns: per test point, Σ⁻¹ and I + JᵀHJ/β side by side,
    both scaled to unit diagonal (correlation form, shared colour scale [−1, 1])."""
    from analysis.plot_style import figure, save, styled

    @styled
    def draw():
        ncols = 2 * N_SHOW
        fig, axes = figure(len(shown), ncols, width=1.45, height=1.45, layout="constrained")
        image = None
        for r, (_, run) in enumerate(shown.iterrows()):
            P, Q = matrices[run.run_id]
            for c in range(ncols):
                ax = axes[r, c]
                point, which = divmod(c, 2)
                M = torch.from_numpy((P, Q)[which][min(point, len(P) - 1)])
                image = ax.imshow(unit_diagonal(M).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
                ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
                ax.spines[:].set_visible(True)
                if r == 0:
                    ax.set_title(f"x{point + 1}: {_PANELS[which]}", fontsize=7)
            axes[r, 0].set_ylabel(f"b={run.block_size}\nβ={run.beta:g}", fontsize=7)
        fig.colorbar(image, ax=axes, shrink=0.6, label=r"$M_{ij} / \sqrt{M_{ii} M_{jj}}$")
        label = common.group_label(shown.iloc[0], tuple(common.GROUP[:-1]))
        fig.suptitle(f"{label}: posterior precision vs decoder curvature (Kumar & Poole "
                     "eq. 11)", fontsize=8)
        return save(fig, stem)

    return draw()
