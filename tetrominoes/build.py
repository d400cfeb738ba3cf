"""Write the Tetrominoes dataset to disk (SPEC §2): images, factors, splits, manifest, preview.

The directory is built in a temporary sibling and renamed into place, so a reader never
sees half a dataset and an existing one is replaced only once the new one is complete. The
same seed gives byte-identical files (no timestamps anywhere: zip entries of the ``.npz``
splits carry a fixed date).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from rdbench.io import (
    InputError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    sha256_file,
    staged_directory,
)
from rdbench.processes import exit_with_parent
from tetrominoes.factors import BINS, FACTOR_NAMES, RANGES, sample_factors
from tetrominoes.raster import SIZE, render
from tetrominoes.splits import SPLIT_NAMES, make_all_splits

FORMAT_VERSION = 1
GENERATOR_VERSION = "1.0.0"  # bump when the images or splits of a seed would change
TASK_ROWS = 4096  # rows per worker task: 12.6 MB of uint8 images
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
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


def write_images(path: Path, chunks: Iterator[np.ndarray], n: int, progress: bool = True) -> str:
    """Write rendered ``chunks`` (n rows in all) as ``path`` (.npy, uint8 (n, 32, 32, 3)).

    The header goes first and the chunks are appended in order, so memory stays at a few
    chunks whatever n is; the sha256 is taken on the fly and returned.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
        "shape": (n, SIZE, SIZE, 3)})
    digest = hashlib.sha256(header.getvalue())

    def write(f) -> None:
        f.write(header.getvalue())
        with tqdm(total=n, unit="img", desc="render", disable=not progress) as bar:
            for images in chunks:
                block = images.tobytes()
                f.write(block)
                digest.update(block)
                bar.update(len(images))

    atomic_write(path, write)
    return digest.hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-able .npz with a fixed entry date (``np.savez`` stamps the clock).

    Stored, not deflated: compressing 19 index files took seconds for ~25 MB saved.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.save(entry, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            z.writestr(info, entry.getvalue())
    return buffer.getvalue()


def preview_png(images: np.ndarray, rows: int = 8, cols: int = 16, seed: int = 0) -> bytes:
    """A PNG grid of ``rows × cols`` random samples, 2× enlarged, 2-pixel grey gutters."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(rows * cols, len(images)), replace=False))
    cell = 2 * SIZE + 2
    canvas = np.full((rows * cell + 2, cols * cell + 2, 3), 48, dtype=np.uint8)
    for k, row in enumerate(pick):
        i, j = divmod(k, cols)
        big = np.repeat(np.repeat(images[row], 2, axis=0), 2, axis=1)
        canvas[2 + i * cell:i * cell + cell, 2 + j * cell:j * cell + cell] = big
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def _manifest(seed: int, bins: Sequence[int], n: int, splits: dict, files: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "generator": "rdbench tetrominoes",
        "generator_version": GENERATOR_VERSION,
        "rendering": "exact area coverage; colour hsv_to_rgb(hue, 1, coverage); uint8 round",
        "seed": int(seed),
        "factors": list(FACTOR_NAMES),
        "ranges": {k: list(v) for k, v in RANGES.items()},
        "bins": dict(zip(FACTOR_NAMES, (int(b) for b in bins), strict=True)),
        "counts": {"images": n, "image_shape": [SIZE, SIZE, 3]},
        "splits": {k: {"train": len(tr), "test": len(te)} for k, (tr, te) in splits.items()},
        "files": dict(sorted(files.items())),
    }


def fingerprint(manifest: dict) -> str:
    """Short content id: the first 16 hex digits of sha256 over the manifest's file hashes."""
    text = json.dumps(manifest.get("files", {}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=exit_with_parent,
                               initargs=(os.getpid(),)) if workers > 1 else None
    try:
        with staged_directory(target, force, kind="dataset") as tmp:
            chunks = render_in_order(array, pool, 2 * workers)  # workers start now
            # factors and splits are written by a thread while the workers render
            with ThreadPoolExecutor(1) as side:
                tables = side.submit(_write_tables, tmp, factors, int(seed))
                files = {"images.npy": write_images(tmp / "images.npy", chunks, len(array),
                                                    progress)}
                splits = tables.result()
            _write_preview_and_manifest(tmp, int(seed), bins, splits, files)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return target


def _write_tables(tmp: Path, factors: pd.DataFrame, seed: int) -> dict:
    """factors.csv and splits/<name>.npz; returns the splits."""
    atomic_write_text(tmp / "factors.csv", factors.to_csv(index=False))
    splits = make_all_splits(factors, seed)
    for name in SPLIT_NAMES:
        train, test = splits[name]
        blob = npz_bytes({"train": train, "test": test})
        atomic_write_bytes(tmp / "splits" / f"{name}.npz", blob)
    return splits


def _write_preview_and_manifest(tmp: Path, seed: int, bins: tuple[int, ...], splits: dict,
                                files: dict[str, str]) -> None:
    images = np.load(tmp / "images.npy", mmap_mode="r")
    atomic_write_bytes(tmp / "preview.png", preview_png(images, seed=seed))
    n = len(images)
    del images
    for path in sorted(tmp.rglob("*")):
        rel = path.relative_to(tmp).as_posix()
        if path.is_file() and rel not in files:
            files[rel] = sha256_file(path)
    atomic_write_json(tmp / "manifest.json", _manifest(seed, bins, n, splits, files))
