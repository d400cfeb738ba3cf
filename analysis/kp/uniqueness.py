"""Kumar & Poole (2020), Appendix C: a mean-field posterior makes the latents unique.

Modules: ``uniqueness_model`` (data, parameterisation, ELBO, Procrustes angle),
``uniqueness_training`` (config, batched trials, Adam), ``orientations`` (the sweep of W's
orientation), ``uniqueness_plot`` (tables and figures); this one runs the experiments and
the CLI.

What the experiment shows (see README): for every ν the diagonal-Σ optimum is unique (runs from
different inits on one data set agree to < 0.01° and reach the full-Σ optimum's ELBO). With
the decoder's σ at the data's 0.05 (the default) it is the true axes only for ν = identity:
for a saturating ν the mean-field gap of the generating model varies from point to point and a
rotated decoder has the higher ELBO, by an angle set by W's orientation
(``orientation_sweep``: ≈ 0 for every ν only at 45°; up to ~30° elsewhere), with or without
the encoder (``analysis.kp.unamortised``). A larger decoder σ (``--decoder-std``, e.g.
"learned", where the amortised model's misfit puts it at 0.1–0.5) brings the optimum close to
the true axes (within 3° for elu, 9° sigmoid, 20° tanh) and the paper's trend shows for every
ν; a fixed σ above a signal direction's scale drops that latent instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from analysis.kp.orientations import (
    ORIENTATION_FULL,
    ORIENTATION_QUICK,
    orientation_angles,
    orientation_sweep,
)
from analysis.kp.uniqueness_training import (
    PAPER_SCHEDULE,
    QUICK_SCHEDULE,
    TRIAL_COLUMNS,
    UniquenessConfig,
    build_batch,
    evaluate_batch,
    run_trials,
    set_generating_decoder,
    train_batch,
)
from rdbench.io import InputError, atomic_write_json, atomic_write_text, staged_directory


def run_experiment(config: UniquenessConfig, device: torch.device,
                   progress: bool = True) -> pd.DataFrame:
    """Train and evaluate every trial; one row per trial (see ``TRIAL_COLUMNS``, then
    ``DIAGNOSTIC_COLUMNS``)."""
    return run_trials(config, device, progress)


def same_data_trials(nonlinearity: str, n: int, inits: int, *, seed: int = 0,
                     device: torch.device | str = "cpu",
                     config: UniquenessConfig | None = None) -> pd.DataFrame:
    """One data set, ``inits`` initialisations per covariance: is the solution unique?

    Trial k (of each covariance) starts from its own initialisation and rotations; all see
    the data of trial 0. A unique optimum shows as equal angles across k (not necessarily 0).
    """
    config = config or UniquenessConfig(schedule=((n, inits),), seed=seed)
    batch = build_batch(replace(config, schedule=((n, inits),)), nonlinearity,
                        torch.device(device))
    with torch.no_grad():
        batch.z.copy_(batch.z[:1].clone().expand_as(batch.z))
        batch.x.copy_(batch.x[:1].clone().expand_as(batch.x))
    train_batch(batch, config, nonlinearity)
    table = evaluate_batch(batch, config, nonlinearity)[list(TRIAL_COLUMNS)]
    return table.sort_values(["covariance", "trial"], ignore_index=True)


def true_decoder_trials(config: UniquenessConfig, nonlinearity: str,
                        device: torch.device | str = "cpu") -> pd.DataFrame:
    """The trials of ``config`` with the decoder fixed at the generating one (A = W, b = 0)
    and only the encoder (C, d, Σ) trained: is the true model the ELBO optimum?

    Rows match those of ``run_experiment`` for the same config (same data and init), so
    ``elbo`` here minus ``elbo`` there is the ELBO of the true model relative to the learned
    one; > 0 would mean training stopped short, < 0 that the optimum is another model.
    """
    batch = build_batch(config, nonlinearity, torch.device(device))
    set_generating_decoder(batch, config, nonlinearity)
    train_batch(batch, config, nonlinearity, frozen=("A", "b"))
    table = evaluate_batch(batch, config, nonlinearity)[list(TRIAL_COLUMNS)]
    return table.sort_values(["covariance", "iterations", "trial"], ignore_index=True)


def make_config(quick: bool, seed: int) -> UniquenessConfig:
    """The paper's schedule (420 trials per ν and Σ), or the quick one."""
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed}")
    return UniquenessConfig(schedule=QUICK_SCHEDULE if quick else PAPER_SCHEDULE, seed=seed)


def main(args: argparse.Namespace) -> int:
    """``rdbench kp uniqueness --out DIR [--quick] [--seed S] [--device D] [--force]
    [--decoder-std SIGMA ...] [--optimizer adam|gd] [--max-trials K]
    [--orientations [STEP] | --unamortised]``;
    with ``--orientations`` the orientation sweep runs instead, with ``--unamortised`` the
    same trials with per-point posteriors. Several ``--decoder-std`` values run the whole
    experiment once per value, each into ``DIR/decoder-std-<σ>``, and compare them."""
    from rdbench.device import resolve_device
    from rdbench.io import check_output_dir

    unamortised = getattr(args, "unamortised", False)
    orientations = getattr(args, "orientations", None)
    if unamortised and orientations is not None:
        raise InputError("--unamortised and --orientations are mutually exclusive "
                         "(the orientation sweep trains the amortised encoder)")
    check_output_dir(args.out, args.force, kind="kp-uniqueness")
    config = make_config(args.quick, getattr(args, "seed", 0))
    config = replace(config, optimizer=getattr(args, "optimizer", config.optimizer))
    names = getattr(args, "nonlinearities", None)
    if names:  # UniquenessConfig rejects unknown names
        config = replace(config, nonlinearities=tuple(dict.fromkeys(names)))
    max_trials = getattr(args, "max_trials", None)
    if max_trials is not None:
        if orientations is not None:
            raise InputError("--max-trials does not apply to --orientations (it has --quick)")
        if max_trials < 1:
            raise InputError(f"--max-trials must be ≥ 1, got {max_trials}")
        config = replace(config, schedule=tuple((n, min(trials, max_trials))
                                                for n, trials in config.schedule))
    stds = dict.fromkeys(getattr(args, "decoder_std", None) or [config.decoder_std])
    configs = sorted((replace(config, decoder_std=std) for std in stds),  # each validates σ
                     key=lambda c: (c.likelihood_std is None, c.likelihood_std or 0.0))
    if orientations is not None:
        if len(configs) > 1:
            raise InputError("--orientations takes one --decoder-std value")
        angles = orientation_angles(orientations)
        configs = [replace(configs[0], schedule=(ORIENTATION_QUICK if args.quick
                                                 else ORIENTATION_FULL,))]
    device = resolve_device(args.device)
    # Tensors are small (≤ a few MB): intra-op threads only add contention on a shared CPU.
    torch.set_num_threads(1)
    if orientations is not None:
        return _main_orientations(args, configs[0], angles, device)
    inference = "unamortised" if unamortised else "amortised"
    started = time.perf_counter()
    with staged_directory(args.out, force=args.force, kind="kp-uniqueness") as tmp:
        if len(configs) == 1:
            summary = _run_into(tmp, configs[0], device, inference)
        else:
            summary = pd.concat([_run_into(tmp / f"decoder-std-{c.decoder_label}", c, device,
                                           inference).assign(decoder_std=c.decoder_label)
                                 for c in configs], ignore_index=True)
            _write_sigma_comparison(tmp, summary, configs[0], inference)
    seconds = time.perf_counter() - started
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {Path(args.out)} ({seconds:.0f} s on {device})")
    return 1 if (summary["diverged"] == summary["trials"]).all() else 0  # nothing to report


def _run_into(directory: Path, config: UniquenessConfig, device: torch.device,
              inference: str) -> pd.DataFrame:
    """Run every trial of ``config`` and write trials.csv, summary.csv/.md, config.json and
    the angle-vs-ELBO figure into ``directory``; returns the summary table."""
    from analysis.kp.unamortised import run_unamortised
    from analysis.kp.uniqueness_plot import plot_angles, summarise, summary_markdown

    directory.mkdir(exist_ok=True)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    trials = (run_unamortised if inference == "unamortised" else run_experiment)(config,
                                                                                 device)
    seconds = time.perf_counter() - started
    summary = summarise(trials)
    _warn_diverged(int(summary["diverged"].sum()), len(trials), config, "summary.md")
    atomic_write_text(directory / "trials.csv", trials[list(TRIAL_COLUMNS)].to_csv(
        index=False, float_format="%.6g"))
    atomic_write_text(directory / "summary.csv", summary.to_csv(index=False,
                                                                float_format="%.4g"))
    atomic_write_text(directory / "summary.md", summary_markdown(summary, config, seconds,
                                                                 device, inference))
    atomic_write_json(directory / "config.json", {**asdict(config), "inference": inference,
                                                  "device": str(device),
                                                  "seconds": round(seconds, 1)})
    title = "unamortised VI: per-point q_i(z) = N(μ_i, Σ_i)" if inference == "unamortised" \
        else None
    plot_angles(trials, directory / "angle_vs_elbo", title=title)
    return summary


def _warn_diverged(diverged: int, total: int, config: UniquenessConfig, where: str) -> None:
    """One stderr line when trials diverged (their rows are NaN, see ``evaluate_batch``)."""
    if diverged:
        hint = "; plain gradient descent needs a larger σ (try --decoder-std learned)" \
            if config.optimizer == "gd" else ""
        print(f"rdbench: warning: {diverged} of {total} trials diverged (decoder σ "
              f"{config.decoder_label}, {config.optimizer}){hint}; see {where}",
              file=sys.stderr)


def _write_sigma_comparison(directory: Path, summary: pd.DataFrame, config: UniquenessConfig,
                            inference: str) -> None:
    """decoder_std.csv/.md and the angle-vs-σ figure of a run over several decoder σ."""
    from analysis.kp.uniqueness_plot import plot_decoder_std, sigma_markdown

    atomic_write_text(directory / "decoder_std.csv", summary.to_csv(index=False,
                                                                    float_format="%.4g"))
    atomic_write_text(directory / "decoder_std.md", sigma_markdown(summary, config, inference))
    plot_decoder_std(summary, directory / "angle_vs_decoder_std")


def _main_orientations(args: argparse.Namespace, config: UniquenessConfig,
                       angles: list[float], device: torch.device) -> int:
    """Run the orientation sweep; write orientations.csv/.md, config.json and the figure."""
    from analysis.kp.uniqueness_plot import orientation_markdown, plot_orientations

    started = time.perf_counter()
    table = orientation_sweep(config, angles, device, progress=True)
    seconds = time.perf_counter() - started
    markdown = orientation_markdown(table, config, seconds, device)
    with staged_directory(args.out, force=args.force, kind="kp-uniqueness") as tmp:
        atomic_write_text(tmp / "orientations.csv", table.to_csv(index=False,
                                                                 float_format="%.6g"))
        atomic_write_text(tmp / "orientations.md", markdown)
        atomic_write_json(tmp / "config.json", {**asdict(config), "q_angles_deg": angles,
                                                "device": str(device),
                                                "seconds": round(seconds, 1)})
        plot_orientations(table, tmp / "angle_vs_orientation")
    print(markdown)
    diverged = int(table["elbo"].isna().sum())
    _warn_diverged(diverged, len(table), config, "orientations.md")
    print(f"wrote {Path(args.out)} ({seconds:.0f} s on {device})")
    return 1 if diverged == len(table) else 0  # nothing to report
