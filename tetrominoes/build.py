"""Write the Tetrominoes dataset to disk (SPEC §2) in rdbench's one dataset format.

The factors are sampled and the images rendered here (in worker processes, in row order);
:func:`imagesets.writer.write_dataset` writes them as it does any dataset: built in a
temporary sibling and renamed into place, streamed in bounded memory, byte-identical for the
same seed (so the fingerprint, and the run ids built on it, are those of earlier versions).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from imagesets.writer import preview_png as _preview_png
from imagesets.writer import write_dataset
from rdbench.io import InputError, check_output_dir
from rdbench.processes import exit_with_parent
from tetrominoes.factors import BINS, FACTOR_NAMES, RANGES, sample_factors
from tetrominoes.raster import SIZE, render
from tetrominoes.splits import SPECS, make_all_splits, split_info

GENERATOR_VERSION = "1.0.0"  # bump when the images or splits of a seed would change
TASK_ROWS = 4096  # rows per worker task: 12.6 MB of uint8 images
TINY_GRID = (4, 4, 2, 4, 4)  # 512 rows: the test fixture's grid (every split non-empty)


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_args(seed: int, workers: int | None, grid: Sequence[int] | None) -> int:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {seed!r}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if grid is not None and (len(grid) != len(BINS) or min(grid) < 1):
        raise InputError(f"grid must be {len(BINS)} positive bin counts, got {grid}")
    return workers or default_workers()


def _context():
    """fork where there is one: workers only run numpy (no BLAS, no locks of the parent's
    threads), and spawn would re-import the caller's ``__main__`` (unguarded scripts fail)."""
    import multiprocessing

    return get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def render_in_order(factors: np.ndarray, pool: ProcessPoolExecutor | None,
                    window: int = 4) -> Iterator[np.ndarray]:
    """Rendered chunks of ``TASK_ROWS`` rows, in row order; ≤ ``window`` chunks in flight.

    The first tasks are submitted at once (so a fork pool forks now, before the caller
    starts any thread); the rest as results are taken.
    """
    starts = list(range(0, len(factors), TASK_ROWS))
    if pool is None:
        return (render(factors[s:s + TASK_ROWS]) for s in starts)
    pending = deque(pool.submit(render, factors[s:s + TASK_ROWS]) for s in starts[:window])

    def results() -> Iterator[np.ndarray]:
        for s in starts[window:]:
            yield pending.popleft().result()
            pending.append(pool.submit(render, factors[s:s + TASK_ROWS]))
        while pending:
            yield pending.popleft().result()

    return results()


def generate(out: str | os.PathLike, *, seed: int = 0, workers: int | None = None,
             force: bool = False, progress: bool = True,
             _grid: Sequence[int] | None = None) -> Path:
    """Write the dataset of ``seed`` to ``out``; returns the directory's path.

    ``_grid`` (private, for tests): bins per factor instead of (16, 8, 5, 16, 16), giving a
    coarser dataset over the same ranges that everything else reads unchanged.
    """
    workers = _check_args(seed, workers, _grid)
    target = check_output_dir(out, force, kind="dataset")
    bins = tuple(BINS if _grid is None else _grid)
    factors = sample_factors(int(seed), bins)
    array = factors.loc[:, list(FACTOR_NAMES)].to_numpy(np.float64)
    pool = (ProcessPoolExecutor(workers, mp_context=_context(), initializer=exit_with_parent,
                                initargs=(os.getpid(),)) if workers > 1 else None)
    try:
        chunks = render_in_order(array, pool, 2 * workers)  # workers start now
        return write_dataset(
            target, kind="tetrominoes", n=len(array), shape=(SIZE, SIZE, 3), chunks=chunks,
            factors=factors, specs=list(SPECS), splits=lambda: _splits(factors, int(seed)),
            seed=int(seed), extra=_extra(bins), force=force, progress=progress,
            generator="rdbench tetrominoes")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _splits(factors: pd.DataFrame, seed: int) -> dict:
    """The paper's 19 splits with their manifest info (on a very coarse test grid, a split
    with an empty side is left out)."""
    return {name: (train, test, split_info(name))
            for name, (train, test) in make_all_splits(factors, seed).items()
            if len(train) and len(test)}


def _extra(bins: tuple[int, ...]) -> dict:
    """Tetrominoes' own manifest fields."""
    return {"generator_version": GENERATOR_VERSION,
            "rendering": "exact area coverage; colour hsv_to_rgb(hue, 1, coverage); uint8 round",
            "ranges": {k: list(v) for k, v in RANGES.items()},
            "bins": dict(zip(FACTOR_NAMES, (int(b) for b in bins), strict=True)),
            "display_factors": ["x", "y"]}


def preview_png(images: np.ndarray, rows: int = 8, cols: int = 16, seed: int = 0) -> bytes:
    """A PNG grid of ``rows × cols`` random samples, 2× enlarged, 2-pixel grey gutters."""
    return _preview_png(images, rows, cols, seed)
