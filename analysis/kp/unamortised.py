"""Kumar & Poole (2020), Appendix C: the uniqueness experiment with unamortised VI (Fig. 6).

Same data, decoder, schedule and trials as ``analysis.kp.uniqueness``, but instead of an
encoder every data point i has its own posterior q_i(z) = N(μ_i, Σ_i), all learned:

    A = A' O_Aᵀ,  μ_i = O_M μ'_i,  Σ_i = O_S L_i L_iᵀ O_Sᵀ,  L_i = [[e^{l_i1}, 0], [ℓ_i, e^{l_i2}]]

with A', b, μ'_i, l_i, ℓ_i learned and the O's fixed random rotations per trial (their
"Σ_i = O D'_i D'_iᵀ Oᵀ"); a diagonal Σ_i has O_S = I and ℓ_i ≡ 0, as in the amortised
model. A trial starts from the amortised trial's initial state: its A, rotations O_A, O_S,
and μ_i = C x_i + d of its initial encoder (O_M = O_C), so μ'_i = C' x_i + d'.

The angle is between the true z and the per-point means μ_i. Without an encoder there is no
amortisation gap: each q_i is the best Gaussian (diagonal or full) for its own x_i.
"""

from __future__ import annotations

import pandas as pd
import torch

from analysis.kp.uniqueness_model import elbo_per_point, init_trial
from analysis.kp.uniqueness_training import (
    Batch,
    UniquenessConfig,
    build_batch,
    evaluate_batch,
    run_trials,
    set_generating_decoder,
    train_batch,
    trials_from,
)

UNAMORTISED_PARAMS = ("A", "b", "m", "log_diag", "off")  # learned parameters of one trial


def init_unamortised(generator: torch.Generator, full: bool,
                     x: torch.Tensor) -> tuple[dict, dict]:
    """Initial per-point parameters and fixed rotations of one trial, for data x (N, 2).

    Draws exactly what ``init_trial`` draws, so the trial starts where its amortised twin
    does: the same A and rotations, and μ_i = C x_i + d of the same initial encoder. The
    per-point parameters are stored points innermost: μ' and l as (2, N), ℓ as (N,)."""
    amortised, fixed = init_trial(generator, full)
    n = x.shape[0]
    params = {"A": amortised["A"], "b": amortised["b"],
              "m": amortised["C"] @ x.T + amortised["d"][:, None],       # μ'_i, (2, N)
              "log_diag": torch.zeros(2, n, dtype=torch.float64),
              "off": torch.zeros(n, dtype=torch.float64)}
    fixed = {"O_A": fixed["O_A"], "O_M": fixed["O_C"], "O_S": fixed["O_S"],
             "full": fixed["full"]}
    return params, fixed


def posteriors(params: dict, fixed: dict) -> tuple[torch.Tensor, ...]:
    """Effective (A, b, μ, Σ, log det Σ): (T, 2, 2), (T, 2), (T, N, 2), (T, N, 2, 2), (T, N).

    μ and Σ are views of (T, 2, N) and (T, 2, 2, N) tensors (points innermost, which is what
    vectorises in ``elbo_per_point``):
    L_i L_iᵀ = [[e^{2l₁}, e^{l₁}ℓ], [e^{l₁}ℓ, ℓ² + e^{2l₂}]], rotated by O_S with two
    batched products over all points at once."""
    A = params["A"] @ fixed["O_A"].mT                                  # (T, 2, 2)
    mu = fixed["O_M"] @ params["m"]                                    # (T, 2, N)
    T, N = mu.shape[0], mu.shape[2]
    e1, e2 = params["log_diag"].exp().unbind(1)                        # (T, N) each
    off = params["off"] * fixed["full"][:, None]
    cross = e1 * off
    LL = torch.stack([e1.square(), cross, cross, off.square() + e2.square()], 1)  # (T, 4, N)
    O = fixed["O_S"]
    OLL = (O @ LL.view(T, 2, 2 * N)).view(T, 2, 2, N)                  # (O LLᵀ)_{a d i}
    Sigma = (O @ OLL.transpose(1, 2).reshape(T, 2, 2 * N)).view(T, 2, 2, N)  # Σ = Σᵀ
    logdet = 2 * params["log_diag"].sum(1)
    return A, params["b"], mu.mT, Sigma.permute(0, 3, 1, 2), logdet


def unamortised_elbo(batch: Batch, config: UniquenessConfig, nonlinearity: str,
                     start: int = 0) -> torch.Tensor:
    """ELBO per point of trials ``start:`` of an unamortised batch, (T − start,)."""
    params, fixed, x = trials_from(batch, start)
    return elbo_per_point(*posteriors(params, fixed), x, nonlinearity, config.likelihood_std,
                          config.quadrature_nodes)


def unamortised_means(batch: Batch) -> torch.Tensor:
    """The per-point posterior means μ_i, (T, N, 2)."""
    return (batch.fixed["O_M"] @ batch.params["m"]).mT


def build_unamortised_batch(config: UniquenessConfig, nonlinearity: str,
                            device: torch.device) -> Batch:
    """Data and initial state of every (n, trial, covariance) of one ν, sorted by n; the
    rows, data and initial decoder are those of ``build_batch``."""
    return build_batch(config, nonlinearity, device, init=init_unamortised)


def run_unamortised(config: UniquenessConfig, device: torch.device,
                    progress: bool = True) -> pd.DataFrame:
    """Every trial of ``config`` with unamortised VI; rows as ``run_experiment``'s."""
    return run_trials(config, device, progress, build=build_unamortised_batch,
                      elbo=unamortised_elbo, means=unamortised_means,
                      desc="kp uniqueness (unamortised)")


def fit_to_generating_decoder(config: UniquenessConfig, nonlinearity: str,
                              device: torch.device | str = "cpu") -> Batch:
    """The trials of ``config`` with the decoder fixed at the generating one (A = W, b = 0)
    and only the per-point posteriors trained (cf. ``true_decoder_trials``)."""
    batch = build_unamortised_batch(config, nonlinearity, torch.device(device))
    set_generating_decoder(batch, config, nonlinearity)
    train_batch(batch, config, nonlinearity, frozen=("A", "b"), elbo=unamortised_elbo)
    return batch


def evaluate_unamortised(batch: Batch, config: UniquenessConfig,
                         nonlinearity: str) -> pd.DataFrame:
    """One row per trial of a trained unamortised batch: exact ELBO and angle of the μ_i."""
    return evaluate_batch(batch, config, nonlinearity, elbo=unamortised_elbo,
                          means=unamortised_means)
