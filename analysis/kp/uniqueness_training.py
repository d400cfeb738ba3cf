"""Kumar & Poole (2020), Appendix C: the experiment's config and its batched trials.

Training: full batch, Adam (or the paper's plain gradient descent), learning rate 0.1
divided by 10 every n steps, 5n steps. All trials of one ν (every n, both covariances) form
one batch with a leading trial dimension; trials are sorted by length so the ones still
training are always a suffix of the batch.
Evaluation reports each trial's ELBO in float64 with 32 quadrature nodes and its Procrustes
angle (``analysis.kp.uniqueness_model``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import pandas as pd
import torch
from tqdm import tqdm

from analysis.kp.uniqueness_model import (
    NONLINEARITIES,
    decoder_encoder,
    elbo_linear,
    elbo_quadrature,
    generating_W,
    init_trial,
    make_data,
    procrustes_angle,
    trial_generator,
)
from rdbench.io import InputError

COVARIANCES = ("diagonal", "full")
OPTIMIZERS = ("adam", "gd")  # gd: the paper's plain full-batch gradient descent
# The paper's schedule: n -> random trials (420 per ν and covariance).
PAPER_SCHEDULE = ((100, 20), (500, 20), *((k * 1000, 20) for k in range(1, 10)),
                  (10_000, 100), (20_000, 100))
# Quick: 16 trials per ν and Σ; the 8 longest (5·3000 steps) are within ~1° of the converged angle.
QUICK_SCHEDULE = ((300, 4), (1000, 4), (3000, 8))


@dataclass(frozen=True)
class UniquenessConfig:
    """Everything that defines one run of the experiment (written as ``config.json``)."""

    schedule: tuple[tuple[int, int], ...] = PAPER_SCHEDULE  # (n, trials): 5n steps each
    nonlinearities: tuple[str, ...] = tuple(NONLINEARITIES)
    n_points: int = 4000
    noise_std: float = 0.05  # of the data, x = ν(Wz) + ε
    decoder_std: float | str = 0.05  # the likelihood's σ, or "learned" (σ² = the ELBO's best)
    learning_rate: float = 0.1
    decays: int = 5  # lr·10^-k for k = 0..decays-1, n steps each
    quadrature_nodes: int = 4  # training; the reported ELBO uses 32 nodes in float64
    dtype: str = "float32"
    seed: int = 0
    optimizer: str = "adam"  # full batch: "adam" (betas 0.9/0.999, eps 1e-8) or "gd"

    def __post_init__(self) -> None:
        unknown = [n for n in self.nonlinearities if n not in NONLINEARITIES]
        if unknown:
            raise InputError(f"unknown nonlinearity {unknown[0]!r}; "
                             f"choose from {' '.join(NONLINEARITIES)}")
        std = self.decoder_std
        if std != "learned" and (isinstance(std, str) or not (math.isfinite(std) and std > 0)):
            raise InputError(f"the decoder's σ must be 'learned' or a positive number, got {std!r}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose from "
                             f"{' '.join(OPTIMIZERS)}")

    @property
    def likelihood_std(self) -> float | None:
        """The decoder likelihood's σ for the ELBO functions; None when it is learned."""
        return None if self.decoder_std == "learned" else float(self.decoder_std)

    @property
    def decoder_label(self) -> str:
        """The decoder's σ as a name: "learned" or the number ("0.05"); repr, so distinct
        values get distinct names (they name the directories of a run over several σ)."""
        return "learned" if self.likelihood_std is None else repr(self.likelihood_std)


TRIAL_COLUMNS = ("nonlinearity", "covariance", "iterations", "trial", "elbo", "angle_deg")
# Beside them in memory (not in trials.csv): the smaller singular value of the learned A. A
# latent the decoder ignores (σ above a signal direction's scale drops it, as in PPCA) has
# ~0; the angle then describes one axis only.
DIAGNOSTIC_COLUMNS = ("decoder_sv_min", "decoder_sigma")  # and the decoder's σ (learned or not)


# ----------------------------------------------------------------------------- training


@dataclass
class Batch:
    """All trials of one ν, sorted by n: learned params, Adam moments, fixed parts, data."""

    rows: list[dict]
    params: dict[str, torch.Tensor]
    fixed: dict[str, torch.Tensor]
    z: torch.Tensor                 # (T, N, 2)
    x: torch.Tensor                 # (T, N, 2)
    n: torch.Tensor                 # (T,) decay period of each trial


# ELBO per point of trials ``start:`` of a batch: (batch, config, ν, start) -> (T − start,)
ElboFunction = Callable[[Batch, UniquenessConfig, str, int], torch.Tensor]


# initial (params, fixed) of one trial from its generator (after the data), Σ full?, data x
InitFunction = Callable[[torch.Generator, bool, torch.Tensor], tuple[dict, dict]]


def build_batch(config: UniquenessConfig, nonlinearity: str, device: torch.device,
                init: InitFunction | None = None) -> Batch:
    """Data and initial state of every (n, trial, covariance) of one ν, sorted by n.

    ``init`` draws a trial's parameters (default: the amortised model, ``init_trial``)."""
    init = init or (lambda g, full, x: init_trial(g, full))
    rows, params, fixed, zs, xs = [], [], [], [], []
    for n, trials in sorted(config.schedule):
        for trial in range(trials):
            for covariance in COVARIANCES:
                g = trial_generator(config.seed, nonlinearity, n, trial)
                z, x = make_data(nonlinearity, config.n_points, config.noise_std, g)
                p, f = init(g, covariance == "full", x)
                rows.append({"nonlinearity": nonlinearity, "covariance": covariance,
                             "iterations": config.decays * n, "trial": trial})
                params.append(p), fixed.append(f), zs.append(z), xs.append(x)
    periods = [r["iterations"] // config.decays for r in rows]
    return stack_batch(rows, params, fixed, zs, xs, periods, config.dtype, device)


def set_generating_decoder(batch: Batch, config: UniquenessConfig, nonlinearity: str) -> None:
    """Set every trial's decoder to the one that generated its data: A = W, b = 0."""
    with torch.no_grad():
        for i, row in enumerate(batch.rows):
            g = trial_generator(config.seed, nonlinearity, row["iterations"] // config.decays,
                                row["trial"])
            W = generating_W(g)  # the W make_data drew for this trial
            batch.params["A"][i] = W.to(batch.x) @ batch.fixed["O_A"][i]   # A = A' O_Aᵀ
            batch.params["b"][i] = 0.0


def stack_batch(rows: list[dict], params: list[dict], fixed: list[dict], zs: list, xs: list,
                 periods: list[int], dtype: str, device: torch.device) -> Batch:
    """One ``Batch`` from per-trial parts (float64, no batch dim), in the given order."""
    dt = getattr(torch, dtype)

    def stack(items: list) -> torch.Tensor:
        return torch.stack(items).to(device=device, dtype=dt)

    return Batch(rows=rows,
                 params={k: stack([p[k] for p in params]).requires_grad_() for k in params[0]},
                 fixed={k: stack([f[k] for f in fixed]) for k in fixed[0]},
                 z=stack(zs), x=stack(xs), n=torch.tensor(periods, device=device))


def trials_from(batch: Batch, start: int) -> tuple[dict, dict, torch.Tensor]:
    """Params, fixed parts and data x of trials ``start:`` of the batch."""
    return ({k: v[start:] for k, v in batch.params.items()},
            {k: v[start:] for k, v in batch.fixed.items()}, batch.x[start:])


def batch_elbo(batch: Batch, config: UniquenessConfig, nonlinearity: str,
               start: int = 0) -> torch.Tensor:
    """ELBO per point of trials ``start:`` of the batch, (T − start,)."""
    params, fixed, x = trials_from(batch, start)
    if nonlinearity == "identity":
        second = x.mT @ x / x.shape[1]
        return elbo_linear(params, fixed, x.mean(1), second, config.likelihood_std)
    return elbo_quadrature(params, fixed, x, nonlinearity, config.likelihood_std,
                           config.quadrature_nodes)


def train_batch(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                progress: tqdm | None = None, frozen: tuple[str, ...] = (),
                elbo: ElboFunction = batch_elbo) -> None:
    """Full-batch Adam (or, with ``config.optimizer`` "gd", plain gradient descent) on
    −ELBO; trial t uses lr·10^-⌊s/n_t⌋ and stops after decays·n_t steps.

    Adam runs on all parameters of a trial as one flat vector (elementwise, so this is the
    same update as one Adam per tensor, with far fewer small tensor operations per step).
    Parameters named in ``frozen`` get zero gradients and so stay where they are. ``elbo``
    is the objective of the batch's variational family (default: the amortised encoder's).
    """
    names = tuple(batch.params)
    T = len(batch.rows)
    sizes = [batch.params[k][0].numel() for k in names]
    dtype = batch.params[names[0]].dtype
    # Adam's moments and scratch, (T, P) each, reused: a fresh multi-MB tensor every step
    # (per-point parameters) costs more in page faults than the arithmetic.
    m1, m2, g, update, scratch = torch.zeros(5, T, sum(sizes), dtype=dtype,
                                             device=batch.x.device)
    total = batch.n * config.decays
    lr_all = config.learning_rate * 10.0 ** -torch.arange(config.decays, dtype=torch.float64)
    for step in range(int(total.max())):
        start = int(torch.searchsorted(total, step, right=True))       # first active trial
        loss = -elbo(batch, config, nonlinearity, start).sum()
        grads = torch.autograd.grad(loss, [batch.params[k] for k in names])
        grads = [gk.zero_() if k in frozen else gk for k, gk in zip(names, grads, strict=True)]
        with torch.no_grad():
            torch.cat([gk[start:].reshape(T - start, -1) for gk in grads], 1, out=g[start:])
            lr = lr_all[torch.div(step, batch.n[start:], rounding_mode="floor").cpu()]
            if config.optimizer == "gd":
                torch.mul(g[start:], lr.to(dtype=dtype, device=g.device)[:, None],
                          out=update[start:])
            else:
                lr = (lr / (1 - 0.9 ** (step + 1))).to(dtype=dtype, device=g.device)
                _adam_update(g[start:], m1[start:], m2[start:], lr, step, update[start:],
                             scratch[start:])
            for k, u in zip(names, update[start:].split(sizes, 1), strict=True):
                batch.params[k][start:].sub_(u.view_as(batch.params[k][start:]))
        if progress is not None:
            progress.update(1)


def _adam_update(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, lr: torch.Tensor,
                 step: int, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """Adam (β = 0.9, 0.999; ε = 1e-8) for rows of flat parameters: updates the moments m, v
    in place and writes the step lr_t·m / (√(v / (1 − β₂ᵗ)) + ε) into ``out``; ``lr`` (rows,)
    already carries the 1/(1 − β₁ᵗ) bias correction."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m.mul_(beta1).add_(g, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    torch.div(v, 1 - beta2 ** (step + 1), out=scratch).sqrt_().add_(eps)
    torch.mul(m, lr[:, None], out=out).div_(scratch)


def encoder_means(batch: Batch) -> torch.Tensor:
    """Posterior means C x + d of the amortised encoder, (T, N, 2)."""
    _, C, d, _, _ = decoder_encoder(batch.params, batch.fixed)
    return batch.x @ C.mT + d[:, None, :]


def evaluate_batch(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                   chunk: int = 16, elbo: ElboFunction = batch_elbo,
                   means: Callable[[Batch], torch.Tensor] = encoder_means) -> pd.DataFrame:
    """Final ELBO (float64, 32 quadrature nodes), Procrustes angle and ``decoder_sv_min``
    (see ``DIAGNOSTIC_COLUMNS``) of every trial.

    ``elbo`` and ``means`` are those of the batch's variational family (default: the
    amortised encoder's); the angle is between the true z and the posterior means."""
    exact = replace(config, quadrature_nodes=32, dtype="float64")
    elbos, angles, sigmas = [], [], []
    with torch.no_grad():
        # a trial that diverged (non-finite parameters) is evaluated at 0 and reported as NaN
        ok = torch.stack([v.reshape(len(v), -1).isfinite().all(1)
                          for v in batch.params.values()]).all(0)
        params = {k: torch.where(ok.view(-1, *[1] * (v.dim() - 1)), v, 0.0)
                  for k, v in batch.params.items()}
        A = params["A"] @ batch.fixed["O_A"].mT                  # the decoder's A
        sv_min = torch.linalg.svdvals(A.double())[:, -1]
        for lo in range(0, len(batch.rows), chunk):
            part = Batch(rows=batch.rows[lo:lo + chunk],
                         params={k: v[lo:lo + chunk].double() for k, v in params.items()},
                         fixed={k: v[lo:lo + chunk].double() for k, v in batch.fixed.items()},
                         z=batch.z[lo:lo + chunk].double(), x=batch.x[lo:lo + chunk].double(),
                         n=batch.n[lo:lo + chunk])
            elbos.append(elbo(part, exact, nonlinearity))
            angles.append(procrustes_angle(part.z, means(part)))
            sigmas.append(_decoder_sigma(part, exact, nonlinearity, elbo))
    table = pd.DataFrame(batch.rows)
    diverged = ~ok.cpu().numpy()
    for column, values in (("elbo", torch.cat(elbos)), ("angle_deg", torch.cat(angles)),
                           ("decoder_sv_min", sv_min), ("decoder_sigma", torch.cat(sigmas))):
        table[column] = values.cpu().numpy()
        table.loc[diverged, column] = float("nan")
    return table


def _decoder_sigma(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                   elbo: ElboFunction) -> torch.Tensor:
    """The decoder σ of each trial, (T,): the fixed one, or the learned √(err/2).

    err, the expected squared error, comes from the ELBO at σ = 1 and σ = 2, which differ
    only in the likelihood term: ELBO(1) − ELBO(2) = −⅜ err + log 4."""
    if config.likelihood_std is not None:
        return torch.full((len(batch.rows),), config.likelihood_std, dtype=torch.float64)
    gap = (elbo(batch, replace(config, decoder_std=1.0), nonlinearity)
           - elbo(batch, replace(config, decoder_std=2.0), nonlinearity))
    return ((math.log(4) - gap) / 0.375 / 2).sqrt()


def run_trials(config: UniquenessConfig, device: torch.device, progress: bool = True, *,
               build: Callable[[UniquenessConfig, str, torch.device], Batch] = build_batch,
               elbo: ElboFunction = batch_elbo,
               means: Callable[[Batch], torch.Tensor] = encoder_means,
               desc: str = "kp uniqueness") -> pd.DataFrame:
    """Train and evaluate every trial of ``config``, one batch per ν, with the variational
    family given by ``build``, ``elbo`` and ``means`` (default: the amortised encoder's);
    one row per trial, columns ``TRIAL_COLUMNS`` and ``DIAGNOSTIC_COLUMNS``."""
    steps = config.decays * max(n for n, _ in config.schedule)
    tables = []
    with tqdm(total=steps * len(config.nonlinearities), desc=desc, unit="step",
              disable=not progress) as bar:
        for nonlinearity in config.nonlinearities:
            bar.set_postfix_str(nonlinearity)
            batch = build(config, nonlinearity, device)
            train_batch(batch, config, nonlinearity, bar, elbo=elbo)
            tables.append(evaluate_batch(batch, config, nonlinearity, elbo=elbo, means=means))
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["nonlinearity", "covariance", "iterations", "trial"],
                             ignore_index=True)[[*TRIAL_COLUMNS, *DIAGNOSTIC_COLUMNS]]
