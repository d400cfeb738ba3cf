"""Kumar & Poole (2020), Appendix C: the diagonal-Σ optimum's angle against W's orientation.

The data of ``analysis.kp.uniqueness_model`` with W = R(α) diag(2, 1) for a grid of fixed α
instead of a Haar-random Q; every α sees the same z and ε, so only W's orientation differs.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm import tqdm

from analysis.kp.uniqueness_model import (
    NONLINEARITIES,
    init_trial,
    make_data,
    rotation_matrix,
    seeded_generator,
)
from analysis.kp.uniqueness_training import (
    Batch,
    UniquenessConfig,
    evaluate_batch,
    stack_batch,
    train_batch,
)
from rdbench.io import InputError

ORIENTATION_COLUMNS = ("nonlinearity", "q_angle_deg", "init", "elbo", "angle_deg")
# (n, inits per orientation): 5n steps; the diagonal optimum is unique, so a few inits suffice.
ORIENTATION_QUICK, ORIENTATION_FULL = (3000, 3), (10_000, 4)


def orientation_generator(seed: int, nonlinearity: str, stream: int) -> torch.Generator:
    """Stream 0 draws the sweep's data (z, ε); stream k ≥ 1 the k-th initialisation.

    The key has a fifth element, so no stream coincides with a ``trial_generator``'s."""
    return seeded_generator([seed, list(NONLINEARITIES).index(nonlinearity), stream, 0, 1])


def orientation_batch(config: UniquenessConfig, nonlinearity: str, q_angles_deg: list[float],
                      device: torch.device) -> Batch:
    """Diagonal-Σ trials of one ν with W = R(α) diag(2, 1) for each α in ``q_angles_deg``.

    ``config.schedule`` is one (n, inits) pair. Paired design: every α sees the same z and ε
    (so only W's orientation differs), and init k starts from the same parameters and fixed
    rotations at every α.
    """
    ((n, inits),) = config.schedule
    rows, params, fixed, zs, xs = [], [], [], [], []
    for q_angle in q_angles_deg:
        Q = rotation_matrix(math.radians(q_angle))
        z, x = make_data(nonlinearity, config.n_points, config.noise_std,
                         orientation_generator(config.seed, nonlinearity, 0), Q)
        for init in range(inits):
            p, f = init_trial(orientation_generator(config.seed, nonlinearity, 1 + init), False)
            rows.append({"nonlinearity": nonlinearity, "q_angle_deg": q_angle, "init": init})
            params.append(p), fixed.append(f), zs.append(z), xs.append(x)
    return stack_batch(rows, params, fixed, zs, xs, [n] * len(rows), config.dtype, device)


def orientation_sweep(config: UniquenessConfig, q_angles_deg: list[float],
                      device: torch.device | str = "cpu",
                      progress: bool = False) -> pd.DataFrame:
    """Train diagonal-Σ models for every ν of ``config`` and orientation α of W = R(α) D.

    ν acts along the coordinate axes, so only ν = identity is rotation invariant. A symmetry
    of the data that maps W's columns to ± themselves (x₁ ↔ x₂ at α = 45°, any ν; x₁ ↦ −x₁
    at α = 0 for odd ν, and for sigmoid up to b) makes the true axes a stationary point, and
    the optimum if it is unique; it need not be (tanh at α = 0: a ± pair off the axes).
    One row per (ν, α, init), columns ``ORIENTATION_COLUMNS``; α is in degrees.
    """
    validate_orientation_config(config, q_angles_deg)
    ((n, _),) = config.schedule
    tables = []
    with tqdm(total=config.decays * n * len(config.nonlinearities), unit="step",
              desc="kp uniqueness orientations", disable=not progress) as bar:
        for nonlinearity in config.nonlinearities:
            bar.set_postfix_str(nonlinearity)
            batch = orientation_batch(config, nonlinearity, q_angles_deg, torch.device(device))
            train_batch(batch, config, nonlinearity, bar)
            tables.append(evaluate_batch(batch, config, nonlinearity))
    return pd.concat(tables, ignore_index=True)[list(ORIENTATION_COLUMNS)]


def validate_orientation_config(config: UniquenessConfig, q_angles_deg: list[float]) -> None:
    """InputError unless the schedule is one (n ≥ 1, inits ≥ 1) and the angles are finite
    (``UniquenessConfig`` itself rejects unknown nonlinearities)."""
    if len(config.schedule) != 1 or min(config.schedule[0]) < 1:
        raise InputError(f"the orientation sweep needs one (n, inits) with n, inits ≥ 1, "
                         f"got schedule {config.schedule}")
    if not q_angles_deg or not all(math.isfinite(a) for a in q_angles_deg):
        raise InputError(f"orientations must be finite angles in degrees, got {q_angles_deg}")


def orientation_angles(step: float) -> list[float]:
    """0, step, 2·step, … below 90°; InputError unless 0 < step ≤ 90."""
    if not (math.isfinite(step) and 0 < step <= 90):
        raise InputError(f"--orientations STEP must be in (0, 90] degrees, got {step}")
    return [k * step for k in range(math.ceil(90 / step - 1e-9))]
