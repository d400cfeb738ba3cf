"""Tables and the angle-vs-ELBO figure of the uniqueness experiment (reads the trial table).

Summary statistic per nonlinearity × covariance: the median |angle| of the highest-ELBO
quarter of trials (the ⌈T/4⌉ trials with the largest ELBO), next to the median over all and
over the longest-trained trials. Each trial has its own W, so for ν ≠ identity the ELBO also
varies between data sets: the highest-ELBO quarter partly selects data sets, and the
longest-trained group is the cleaner "converged" summary.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ORDER = ["identity", "tanh", "sigmoid", "elu"]  # ν in tables and panels
# Okabe–Ito colours (colour-blind safe); markers differ too.
STYLE = {"diagonal": {"color": "#0072B2", "marker": "o", "label": "diagonal Σ"},
         "full": {"color": "#D55E00", "marker": "^", "label": "full Σ"}}


def top_quarter(trials: pd.DataFrame) -> pd.DataFrame:
    """The ⌈T/4⌉ rows with the highest ELBO."""
    return trials.nlargest(math.ceil(len(trials) / 4), "elbo")


# A trial whose decoder A has a singular value below this has dropped a latent.
COLLAPSED_SV = 0.01


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (nonlinearity, covariance): trial count, how many diverged (NaN ELBO;
    left out of the rest), ELBO range, median |angle|s, and (when ``trials`` has
    ``decoder_sv_min``) how many trials, and how many of the top quarter, have a collapsed
    latent."""
    rows = []
    for (nonlinearity, covariance), everything in trials.groupby(["nonlinearity", "covariance"],
                                                                 sort=False):
        group = everything[everything["elbo"].notna()]
        if group.empty:
            rows.append({"nonlinearity": nonlinearity, "covariance": covariance,
                         "trials": len(everything), "diverged": len(everything)})
            continue
        best = top_quarter(group)
        longest = group[group["iterations"] == group["iterations"].max()]
        rows.append({"nonlinearity": nonlinearity, "covariance": covariance,
                     "trials": len(everything), "diverged": len(everything) - len(group),
                     "elbo_max": group["elbo"].max(),
                     "elbo_top_quarter_min": best["elbo"].min(),
                     "median_abs_angle_top_quarter": best["angle_deg"].abs().median(),
                     "median_abs_angle_all": group["angle_deg"].abs().median(),
                     "longest_iterations": longest["iterations"].iloc[0],
                     "longest_trials": len(longest),
                     "median_abs_angle_longest": longest["angle_deg"].abs().median()})
        if "decoder_sigma" in group:
            rows[-1]["decoder_sigma_median"] = group["decoder_sigma"].median()
        if "decoder_sv_min" in group:
            rows[-1].update(collapsed=int((group["decoder_sv_min"] < COLLAPSED_SV).sum()),
                            collapsed_top_quarter=int((best["decoder_sv_min"]
                                                       < COLLAPSED_SV).sum()))
    return _sorted_by_nu(pd.DataFrame(rows), "covariance")


def _sorted_by_nu(table: pd.DataFrame, then: str) -> pd.DataFrame:
    """Rows ordered by ν as in ``ORDER``, then by column ``then``."""
    order = {name: i for i, name in enumerate(ORDER)}
    return table.sort_values(["nonlinearity", then], ignore_index=True,
                             key=lambda c: c.map(order) if c.name == "nonlinearity" else c)


def summary_markdown(summary: pd.DataFrame, config: Any, seconds: float, device: Any,
                     inference: str = "amortised") -> str:
    """The summary table as Markdown, with the settings that produced it; ``inference`` is
    "amortised" (encoder N(Cx + d, Σ)) or "unamortised" (per-point N(μ_i, Σ_i))."""
    schedule = ", ".join(f"n={n}×{t}" for n, t in config.schedule)
    suffix = "" if inference == "amortised" else f" ({inference} VI)"
    lines = [f"# Kumar & Poole (2020), App. C: uniqueness of the latents{suffix}", "",
             f"Schedule (trials per ν and Σ): {schedule}; lr {config.learning_rate}, ÷10 every "
             f"n steps, {config.decays}n steps, {config.optimizer}; "
             f"decoder σ {decoder_sigma(config)}; "
             f"seed {config.seed}; {seconds:.0f} s on {device}.",
             "", "| ν | Σ | trials | max ELBO | median abs angle, top quarter | "
             "median abs angle, all | median abs angle, longest runs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in summary.itertuples():
        if r.diverged == r.trials:
            lines.append(f"| {r.nonlinearity} | {r.covariance} | {r.trials} | all diverged "
                         "| | | |")
            continue
        lines.append(f"| {r.nonlinearity} | {r.covariance} | {r.trials} | {r.elbo_max:.4f} | "
                     f"{r.median_abs_angle_top_quarter:.2f}° | {r.median_abs_angle_all:.2f}° | "
                     f"{r.median_abs_angle_longest:.2f}° ({r.longest_trials} × "
                     f"{r.longest_iterations} steps) |")
    if "decoder_sigma_median" in summary and config.likelihood_std is None:
        lines += ["", "Learned decoder σ, median over trials: " + ", ".join(
            f"{r.nonlinearity} {r.covariance} {r.decoder_sigma_median:.3f}"
            for r in summary.itertuples()) + "."]
    if summary["diverged"].sum():
        lines += ["", "Trials that diverged (non-finite parameters; left out of every other "
                  "column): " + ", ".join(f"{r.nonlinearity} {r.covariance} {r.diverged}/"
                                          f"{r.trials}" for r in summary.itertuples()
                                          if r.diverged) + "."]
    if summary.get("collapsed", pd.Series(dtype=int)).sum():
        lines += ["", "Trials whose decoder ignores a latent (singular value of A below "
                  f"{COLLAPSED_SV:g}; their angle describes one axis only): " + ", ".join(
                      f"{r.nonlinearity} {r.covariance} {r.collapsed}/{r.trials}"
                      for r in summary.itertuples() if r.collapsed) + "."]
    return "\n".join(lines) + "\n"


def decoder_sigma(config: Any) -> str:
    """The decoder likelihood's σ in words: "0.05 (fixed)" or "learned"."""
    fixed = config.likelihood_std is not None
    return config.decoder_label + (" (fixed)" if fixed else "")


def _elbo_limits(trials: pd.DataFrame) -> tuple[float, float]:
    """x range of one panel: the upper 90 % of trials (short runs far off are marked)."""
    lo, hi = trials["elbo"].quantile(0.1), trials["elbo"].max()
    pad = 0.05 * max(hi - lo, 1e-3)
    return lo - pad, hi + pad


def plot_angles(trials: pd.DataFrame, stem: str | Path, title: str | None = None) -> list[Path]:
    """Scatter angle vs ELBO, one panel per ν (their Fig. 1, 5, 6), under an optional
    ``title``; writes stem.png and .pdf."""
    import matplotlib.pyplot as plt

    from analysis.plot_style import save

    names = [n for n in ORDER if n in set(trials["nonlinearity"])]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        _panel(ax, trials[trials["nonlinearity"] == name], name)
    axes[0, 0].set_ylabel("rotation angle (degrees)")
    if axes[0, -1].get_legend_handles_labels()[0]:  # none when every trial diverged
        axes[0, -1].legend(loc="best", fontsize=8, framealpha=0.9)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save(fig, stem)


def _panel(ax: Any, trials: pd.DataFrame, name: str) -> None:
    """One ν: both covariances; trials left of the x range are drawn at its left edge,
    diverged ones (NaN ELBO) not at all."""
    trials = trials[trials["elbo"].notna()]
    if trials.empty:
        ax.text(0.5, 0.5, "every trial diverged", ha="center", va="center",
                transform=ax.transAxes)
        ax.set(title=f"ν = {name}", yticks=[], xticks=[])
        return
    lo, hi = _elbo_limits(trials)
    for covariance, style in STYLE.items():
        group = trials[trials["covariance"] == covariance]
        inside = group["elbo"] >= lo
        ax.scatter(group.loc[inside, "elbo"], group.loc[inside, "angle_deg"], s=14,
                   alpha=0.7, linewidths=0, **style)
        ax.scatter([lo] * int((~inside).sum()), group.loc[~inside, "angle_deg"], s=14,
                   marker="<", color=style["color"], alpha=0.5, linewidths=0)
    ax.set(xlim=(lo, hi), ylim=(-47, 47), yticks=range(-45, 46, 15), title=f"ν = {name}",
           xlabel="ELBO (nats per data point)")
    ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
    ax.grid(alpha=0.25)


# ----------------------------------------------------------------------------- orientation

# Okabe–Ito, one per ν, with distinct markers.
NU_STYLE = {"identity": {"color": "#000000", "marker": "o"},
            "tanh": {"color": "#E69F00", "marker": "s"},
            "sigmoid": {"color": "#009E73", "marker": "^"},
            "elu": {"color": "#CC79A7", "marker": "D"}}


def circular_spread(angles_deg: np.ndarray, period: float = 90.0) -> float:
    """Length of the shortest arc holding all angles, modulo ``period`` (the angles live in
    (−45°, 45°], where 44.9° and −44.9° are 0.2° apart)."""
    a = np.sort(np.mod(angles_deg, period))
    gaps = np.diff(np.concatenate([a, a[:1] + period]))
    return float(period - gaps.max())


def best_per_orientation(table: pd.DataFrame) -> pd.DataFrame:
    """Per (ν, α): the highest-ELBO init's angle and ELBO, and the spread of the angles
    over all inits (``circular_spread``; ~0 when every init finds the same optimum).
    Diverged inits (NaN ELBO) are left out; all NaN where every one diverged."""
    rows = []
    for (nonlinearity, q_angle), group in table.groupby(["nonlinearity", "q_angle_deg"]):
        group = group[group["elbo"].notna()]
        if group.empty:
            rows.append({"nonlinearity": nonlinearity, "q_angle_deg": q_angle,
                         "elbo": np.nan, "angle_deg": np.nan, "init_spread_deg": np.nan})
            continue
        best = group.loc[group["elbo"].idxmax()]
        rows.append({"nonlinearity": nonlinearity, "q_angle_deg": q_angle,
                     "elbo": best["elbo"], "angle_deg": best["angle_deg"],
                     "init_spread_deg": circular_spread(group["angle_deg"].to_numpy())})
    return _sorted_by_nu(pd.DataFrame(rows), "q_angle_deg")


def orientation_markdown(table: pd.DataFrame, config: Any, seconds: float, device: Any) -> str:
    """Angle of the optimum per orientation α (rows) and ν (columns), as Markdown."""
    best = best_per_orientation(table)
    names = [n for n in ORDER if n in set(best["nonlinearity"])]
    ((n, inits),) = config.schedule
    lines = ["# Kumar & Poole (2020), App. C: angle of the diagonal-Σ optimum vs W's "
             "orientation", "",
             f"W = R(α)·diag(2, 1); diagonal Σ; {inits} inits per α, the highest-ELBO one "
             f"shown (spread of all inits' angles in brackets); {config.decays}n steps, "
             f"n = {n}, {config.optimizer}; decoder σ "
             f"{decoder_sigma(config)}; seed {config.seed}; "
             f"{seconds:.0f} s on {device}.", "",
             "| α | " + " | ".join(f"ν = {name}" for name in names) + " |",
             "|---:|" + "---:|" * len(names)]
    for q_angle, group in best.groupby("q_angle_deg"):
        cells = group.set_index("nonlinearity")
        lines.append(f"| {q_angle:g}° | " + " | ".join(
            "diverged" if np.isnan(cells.at[name, "angle_deg"]) else
            f"{cells.at[name, 'angle_deg']:.2f}° ({cells.at[name, 'init_spread_deg']:.2f}°)"
            for name in names) + " |")
    return "\n".join(lines) + "\n"


def plot_orientations(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Angle of the highest-ELBO init vs W's orientation α, one line per ν; all inits as
    faint markers. Writes stem.png and stem.pdf."""
    import matplotlib.pyplot as plt

    from analysis.plot_style import save

    best = best_per_orientation(table)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for name in [n for n in ORDER if n in set(best["nonlinearity"])]:
        style = NU_STYLE[name]
        mine = best[best["nonlinearity"] == name]
        ax.plot(mine["q_angle_deg"], mine["angle_deg"], label=f"ν = {name}", markersize=5,
                linewidth=1.2, **style)
        every = table[table["nonlinearity"] == name]
        ax.scatter(every["q_angle_deg"], every["angle_deg"], s=10, alpha=0.3, linewidths=0,
                   color=style["color"], marker=style["marker"])
    ax.set(xlim=(-3, 93), ylim=(-47, 47), xticks=range(0, 91, 15), yticks=range(-45, 46, 15),
           xlabel="orientation α of W = R(α)·diag(2, 1) (degrees)",
           ylabel="angle of the optimum (degrees)",
           title="diagonal Σ: rotation of the best-ELBO solution")
    ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)
    ax.grid(alpha=0.25)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return save(fig, stem)


# ----------------------------------------------------------------------------- decoder σ


def sigma_markdown(summary: pd.DataFrame, config: Any, inference: str = "amortised") -> str:
    """Median |angle| per ν × decoder σ (diagonal / full Σ), top-ELBO quarter and longest
    runs, from the summaries of a run over several σ (column ``decoder_std``)."""
    sigmas = list(dict.fromkeys(summary["decoder_std"]))
    schedule = ", ".join(f"n={n}×{t}" for n, t in config.schedule)
    suffix = "" if inference == "amortised" else f" ({inference} VI)"
    lines = [f"# Kumar & Poole (2020), App. C: uniqueness against the decoder's σ{suffix}", "",
             f"Schedule (trials per ν and Σ): {schedule}; {config.optimizer}; seed "
             f"{config.seed}; data noise σ = {config.noise_std:g}. Each σ's trials, summary "
             "and figure are in `decoder-std-<σ>/`. Cells: median |angle| with diagonal Σ / "
             "with full Σ."]
    for column, what in (("median_abs_angle_top_quarter", "highest-ELBO quarter of trials"),
                         ("median_abs_angle_longest", "longest-trained trials")):
        lines += ["", f"**{what}**", "", "| ν | " + " | ".join(f"σ = {s}" for s in sigmas)
                  + " |", "|---|" + "---:|" * len(sigmas)]
        cells = summary.set_index(["nonlinearity", "covariance", "decoder_std"])
        for name in [n for n in ORDER if n in set(summary["nonlinearity"])]:
            lines.append(f"| {name} | " + " | ".join(
                " / ".join(_sigma_cell(cells.loc[(name, cov, s)], column)
                           for cov in ("diagonal", "full"))
                for s in sigmas) + " |")
    lines += ["", f"† most of the highest-ELBO quarter has a collapsed latent (a singular "
              f"value of A below {COLLAPSED_SV:g}): the decoder uses one axis, and the angle "
              "describes that axis only."]
    return "\n".join(lines) + "\n"


def _sigma_cell(row: pd.Series, column: str) -> str:
    """"12.3°", "12.3°†" (mostly collapsed) or "diverged" (every trial)."""
    if row["diverged"] == row["trials"]:
        return "diverged"
    return f"{row[column]:.1f}°" + ("†" if _mostly_collapsed(row) else "")


def _mostly_collapsed(row: pd.Series) -> bool:
    """Whether most of a setting's highest-ELBO quarter dropped a latent."""
    quarter = math.ceil(row["trials"] / 4)
    return bool(row.get("collapsed_top_quarter", 0) > quarter / 2)


def plot_decoder_std(summary: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Median |angle| of the highest-ELBO quarter (solid) and of the longest-trained trials
    (dashed) against the decoder's σ, diagonal vs full Σ, one panel per ν."""
    import matplotlib.pyplot as plt

    from analysis.plot_style import save

    sigmas = list(dict.fromkeys(summary["decoder_std"]))
    names = [n for n in ORDER if n in set(summary["nonlinearity"])]
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], names, strict=True):
        for covariance, style in STYLE.items():
            rows = summary[(summary["nonlinearity"] == name)
                           & (summary["covariance"] == covariance)].set_index("decoder_std")
            x = range(len(sigmas))
            ax.plot(x, rows.loc[sigmas, "median_abs_angle_top_quarter"], **style)
            hollow = [i for i, s in enumerate(sigmas) if _mostly_collapsed(rows.loc[s])]
            ax.scatter(hollow, rows.loc[[sigmas[i] for i in hollow],
                                        "median_abs_angle_top_quarter"],
                       s=60, facecolors="white", edgecolors=style["color"],
                       marker=style["marker"], zorder=3)
            ax.plot(x, rows.loc[sigmas, "median_abs_angle_longest"], linestyle="--",
                    alpha=0.5, color=style["color"], marker=style["marker"], markersize=3)
        ax.set(xticks=range(len(sigmas)), xticklabels=sigmas, ylim=(0, 45),
               yticks=range(0, 46, 15), title=f"ν = {name}", xlabel="decoder σ")
    axes[0, 0].set_ylabel("median |angle| (degrees)")
    axes[0, -1].legend(loc="upper right", fontsize=7)
    fig.suptitle("solid: highest-ELBO quarter (hollow: mostly a collapsed latent); dashed: "
                 "longest-trained trials", fontsize=9)
    fig.tight_layout()
    return save(fig, stem)
