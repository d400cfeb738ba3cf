"""One look for every report figure: Okabe–Ito colours, fonts, saving as PNG + PDF.

Figure functions return the written paths, or a :class:`Skipped` note when their inputs are
absent, so the report can say why a figure is missing instead of failing.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from rdbench.io import FIGURE_METADATA, atomic_write  # noqa: E402

# Okabe & Ito (2008), colour-blind safe; yellow last because it is faint on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#000000",
           "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
LINESTYLES = ("-", "--", ":", "-.")
DPI = 150
SET_STYLES = {"train": {"linestyle": "--", "alpha": 0.75}, "test": {"linestyle": "-", "alpha": 1}}

RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5,
    "legend.frameon": False, "savefig.dpi": DPI, "savefig.bbox": "tight",
    "pdf.fonttype": 42, "ps.fonttype": 42, "figure.dpi": 100, "lines.linewidth": 1.4,
    "lines.markersize": 4.5, "errorbar.capsize": 0, "image.interpolation": "nearest",
}


@dataclass(frozen=True)
class Skipped:
    """A figure that was not drawn, with the reason shown in the report."""

    reason: str

    def __str__(self) -> str:
        return f"skipped: {self.reason}"


FigureResult = list[Path] | Skipped


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def styled(draw: Callable) -> Callable:
    """Run a figure function inside the report's rc context (global state left untouched)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 3.4, height: float = 3.0,
           **kwargs) -> tuple[plt.Figure, object]:
    """A figure of ``nrows`` × ``ncols`` panels of ``width`` × ``height`` inches (2-D axes)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, **kwargs)
    return fig, axes


def save(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically; close the figure; return
    both paths."""
    stem = Path(stem)
    paths = []
    for fmt in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=DPI,
                                                          bbox_inches="tight",
                                                          metadata=FIGURE_METADATA))
        paths.append(path)
    plt.close(fig)
    return paths


def safe_name(text: str) -> str:
    """A file-name-safe version of a split/architecture name (``cv-16384`` stays as is)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def short_count(n: float) -> str:
    """16384 -> '16k', 147456 -> '147k', 900 -> '900' (the paper's split labels)."""
    if n != n:  # NaN
        return "?"
    return f"{round(n / 1000)}k" if n >= 1000 else f"{int(n)}"


def beta_axis(ax: Any, betas: Any) -> None:
    """A log-scaled β axis with a tick at every β of the data, labelled plainly (0.3, 1, 3)
    where labels do not collide (see :func:`labelled_betas`)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks = sorted({float(b) for b in betas})
    shown = labelled_betas(ticks)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in shown else ""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("β")


def labelled_betas(betas: list[float], max_labels: int = 8) -> set[float]:
    """The β values to label on a log axis: powers of ten and 1 first, then the others in
    order, each at least 1/``max_labels`` of the axis's span (in decades) from every label
    taken (the paper's 12 β give 0.001 0.01 0.1 0.3 1 3)."""
    logs = {b: math.log10(b) for b in betas if b > 0}
    if len(logs) < 2:
        return set(logs)
    gap = (max(logs.values()) - min(logs.values())) / max_labels
    order = sorted(logs, key=lambda b: (not float(logs[b]).is_integer(), b))
    shown: list[float] = []
    for b in order:
        if all(abs(logs[b] - logs[s]) >= gap - 1e-9 for s in shown):
            shown.append(b)
    return set(shown)
