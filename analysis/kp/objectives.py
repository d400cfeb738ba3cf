"""``rdbench kp objectives RUNS_DIR``: β-VAE objective vs its Taylor approximation vs GRAE.

Kumar & Poole's Fig. 3: for each finished β-VAE run (mean-field and block-diagonal), on
held-out test images, per example in nats (minimisation form; BCE(x, ℓ) stands for the
model's −log p(x|ℓ), Bernoulli or Gaussian, with decoder outputs ℓ, A = JᵀHJ the decoder's
Gauss–Newton matrix at μ, H the likelihood's curvature: diag(σ(1−σ)) for the Bernoulli,
I/σ² for the Gaussian's mean):

    β-VAE   L   = E_q[BCE(x, g(z))] + β·KL(q ‖ N(0, I))      (Monte Carlo, K samples z ~ q)
    Taylor  L₇  = BCE(x, g(μ)) + ½ tr(AΣ) + β·KL(q ‖ N(0, I))          (their eq. 7)
    GRAE    L₁₂ = BCE(x, g(μ)) + (β/2)‖μ‖² + (β/2) log det(I + A/β)    (their eq. 12)

with q = N(μ, Σ) the encoder's posterior. L₇ is the second-order expansion of L about μ
(exact for a ReLU decoder up to the BCE's third and higher derivatives in ℓ); L₁₂ is L₇ at the
optimal covariance Σ* = (I + A/β)⁻¹, so L₁₂ ≤ L₇ with L₇ − L₁₂ = β·KL(N(0, Σ) ‖ N(0, Σ*)).

Outputs in ``--out`` (default RUNS_DIR/kp/objectives): ``objectives.csv`` (one row per
run: the three objectives, their components and standard errors over the test examples),
``objectives_summary.csv`` (mean/std over seeds), figure ``objectives`` (PNG + PDF).
"""

from __future__ import annotations

import argparse
import copy
import math

import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from analysis.kp import common
from benchmark.runs import load_model
from rdbench.device import resolve_device
from rdbench.io import InputError, atomic_write_text, staged_directory

COMPONENTS = ("beta_vae", "taylor", "grae", "distortion_mc", "distortion_mean", "trace_term",
              "kl", "grae_log_det")


def mc_distortion(model, x: Tensor, mu: Tensor, L: Tensor, samples: int,
                  generator: torch.Generator, chunk: int = 8192) -> Tensor:
    """E_q[−log p(x|g(z))] (the model's likelihood) from K = ``samples`` draws z = μ + Lε per
    example: (B,), float64.

    Antithetic pairs (ε, −ε) cancel the first-order fluctuation; each draw is still marginally
    N(0, I), so the estimate is unbiased for any K. Decoded ``chunk`` latents at a time.
    """
    from analysis.estimators import reparameterise

    half = -(-samples // 2)
    eps = torch.randn((half, *mu.shape), generator=generator, dtype=mu.dtype)
    eps = torch.cat([eps, -eps])[:samples].to(mu.device)  # (K, B, d)
    z = reparameterise(eps, mu, scale_tril=L)  # (K, B, d)
    flat_x = x.unsqueeze(0).expand(samples, *x.shape).flatten(0, 1)  # (K·B, ...)
    parts = []
    for zc, xc in zip(z.flatten(0, 1).split(chunk), flat_x.split(chunk), strict=True):
        out = model.decode(zc)
        parts.append(model.likelihood.nll(out, xc.to(out.dtype)).double())
    total = torch.cat(parts).unflatten(0, (samples, len(x)))  # (K, B)
    return total.mean(0)


def objective_terms(x: Tensor, stats: dict[str, Tensor], mc: Tensor, beta: float,
                    likelihood: torch.nn.Module) -> dict[str, Tensor]:
    """Per-example components of the three objectives (all float64, (n,)).

    ``stats``: μ, L, decoder outputs at μ and A (analysis.kp.common.posterior_and_curvature);
    ``mc``: the Monte-Carlo expected distortion; ``likelihood``: the model's (its −log p(x|ℓ)).
    """
    from analysis.estimators import kl_tril_to_standard
    from benchmark.implicit import log_det_regulariser

    mu, L, A = stats["mu"], stats["scale_tril"], stats["A"]
    x = x.flatten(1).double().cpu()
    with torch.no_grad():
        distortion_mean = likelihood.cpu().double().nll(stats["logits"], x).double()
    sigma = L @ L.transpose(-2, -1)
    trace_term = 0.5 * (A * sigma).sum((-2, -1))  # ½ tr(AΣ), both symmetric
    kl = kl_tril_to_standard(mu, L)
    log_det = log_det_regulariser(A, beta)
    return {"beta_vae": mc + beta * kl,
            "taylor": distortion_mean + trace_term + beta * kl,
            "grae": distortion_mean + 0.5 * beta * (mu.square().sum(-1) + log_det),
            "distortion_mc": mc, "distortion_mean": distortion_mean, "trace_term": trace_term,
            "kl": kl, "grae_log_det": log_det}


def run_row(terms: dict[str, Tensor]) -> dict[str, float]:
    """Means over the test examples and standard errors (``*_se``) of every component."""
    row: dict[str, float] = {}
    for key, v in terms.items():
        row[key] = float(v.mean())
        row[f"{key}_se"] = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return row


def evaluate_run(model, config: dict, x: Tensor, samples: int, seed: int = 0) -> dict[str, float]:
    """The row of ``objectives.csv`` for one run on test images ``x`` (n, C, H, W)."""
    stats = common.posterior_and_curvature(model, config, x)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        mu, L = common.encoder_posterior(model, config, x)
        mc = mc_distortion(model, x, mu, L, samples, generator).cpu()
    terms = objective_terms(x, stats, mc, float(config["beta"]), copy.deepcopy(model.likelihood))
    return {**common.identity(config), "n": len(x), "samples": samples, **run_row(terms)}


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per dataset × split × architecture × decoder × latent size ×
    block size × β."""
    keys = [*common.GROUP, "beta"]
    grouped = table.groupby(keys)[list(COMPONENTS)]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    return out.join(grouped.size().rename("n_seeds")).reset_index()


def main(args: argparse.Namespace) -> int:
    out = common.output_dir(args, "objectives")
    if args.examples < 1 or args.samples < 1:
        raise InputError("--examples and --samples must be >= 1")
    runs = common.finished_vae_runs(args.runs_dir)
    common.check_inputs(runs)
    device = resolve_device(args.device)
    rows = []
    for run_dir, config in tqdm(runs, desc="kp objectives", disable=None):
        model = load_model(run_dir, device=device)
        x = common.held_out_images(config, args.examples).to(device)
        rows.append(evaluate_run(model, config, x, args.samples))
    table = pd.DataFrame(rows)
    with staged_directory(out, args.force, kind="kp-objectives") as tmp:
        atomic_write_text(tmp / "objectives.csv", table.to_csv(index=False))
        atomic_write_text(tmp / "objectives_summary.csv", summarise(table).to_csv(index=False))
        plot_objectives(table, tmp / "objectives")
    print(f"kp objectives: {len(table)} runs -> {out}")
    return 0


_CURVES = (("beta_vae", "β-VAE (Monte Carlo)", "-"), ("taylor", "Taylor (eq. 7)", "--"),
           ("grae", "GRAE (eq. 12 / 13)", ":"))


def plot_objectives(table: pd.DataFrame, stem) -> list:
    """Top row: the three objectives vs β per split × architecture × block size (their Fig. 3);
    bottom row: their differences to the β-VAE objective. Mean ± std over seeds."""
    from analysis.plot_style import MARKERS, beta_axis, color, figure, save, styled

    @styled
    def draw():
        shown = common.varying(table)
        groups = list(table.groupby(list(shown), sort=True))
        fig, axes = figure(2, len(groups), width=3.2, height=2.6, layout="constrained")
        for c, (_, g) in enumerate(groups):
            s = g.groupby("beta")[["beta_vae", "taylor", "grae"]]
            mean, std = s.mean(), s.std(ddof=0).fillna(0.0)
            for i, (key, label, ls) in enumerate(_CURVES):
                kw = {"color": color(i), "marker": MARKERS[i], "linestyle": ls,
                      "label": label if c == 0 else None}
                axes[0, c].errorbar(mean.index, mean[key], yerr=std[key], **kw)
                diff = (g[key] - g["beta_vae"]).groupby(g["beta"])
                axes[1, c].errorbar(diff.mean().index, diff.mean(),
                                    yerr=diff.std(ddof=0).fillna(0.0), **{**kw, "label": None})
            axes[0, c].set_title(common.group_label(g.iloc[0], shown), fontsize=8)
            axes[0, c].set_ylabel("objective [nats / example]")
            axes[1, c].set_ylabel("minus β-VAE objective [nats]")
            axes[1, c].axhline(0.0, color="0.5", linewidth=0.6)
            for r in (0, 1):
                beta_axis(axes[r, c], g["beta"])
        fig.legend(loc="outside lower center", ncol=3)
        return save(fig, stem)

    return draw()
