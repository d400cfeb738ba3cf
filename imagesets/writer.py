"""Write a dataset of the one format (:mod:`imagesets.format`), streamed, in bounded memory.

Generators and importers hand :func:`write_dataset` the images as an iterator of uint8
chunks (k, H, W, C): the ``.npy`` header goes first and the chunks are appended in order, so
memory stays at a chunk or two whatever N is, and each file's sha256 is taken on the fly.
The directory is built in a temporary sibling and renamed into place
(:func:`rdbench.io.staged_directory`): a failure at any point (a corrupt source file found
halfway, a full disk) leaves nothing behind. The same inputs give byte-identical files (no
timestamps anywhere: zip entries of the ``.npz`` splits carry a fixed date).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from imagesets.format import CHANNELS, FORMAT_VERSION, FactorSpec, split_file
from imagesets.splits import check_split
from rdbench import __version__
from rdbench.io import (
    InputError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
    staged_directory,
)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
SplitDefs = dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]]


def npy_header(n: int, shape: tuple[int, int, int]) -> bytes:
    """The ``.npy`` (version 1.0) header of a uint8 (n, H, W, C) array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
        "shape": (n, *shape)})
    return header.getvalue()


def write_images(path: Path, chunks: Iterable[np.ndarray], n: int, shape: tuple[int, int, int],
                 progress: bool = True, desc: str = "images") -> str:
    """Write uint8 ``chunks`` (n rows of ``shape`` = (H, W, C) in all) as ``path`` (.npy);
    returns its sha256. A chunk of another dtype or shape, or a count other than n, is an
    InputError (nothing is left: the caller's staging directory is removed)."""
    header = npy_header(n, shape)
    digest = hashlib.sha256(header)

    def write(f) -> None:
        f.write(header)
        written = 0
        with tqdm(total=n, unit="img", desc=desc, disable=not progress) as bar:
            for images in chunks:
                if images.dtype != np.uint8 or images.shape[1:] != tuple(shape):
                    raise InputError(f"images of {images.dtype} {images.shape[1:]}, expected "
                                     f"uint8 {tuple(shape)}")
                block = memoryview(np.ascontiguousarray(images)).cast("B")  # no copy
                f.write(block)
                digest.update(block)
                written += len(images)
                bar.update(len(images))
        if written != n:
            raise InputError(f"the source holds {written} images, expected {n}")

    atomic_write(path, write)
    return digest.hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-able .npz with a fixed entry date (``np.savez`` stamps the clock).

    Stored, not deflated: compressing the index files took seconds for little saved.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as z:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.save(entry, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            z.writestr(info, entry.getvalue())
    return buffer.getvalue()


def write_split(directory: Path, name: str, train: np.ndarray, test: np.ndarray) -> Path:
    """``splits/<name>.npz`` of a dataset directory (sorted int64 ``train``, ``test``)."""
    return atomic_write_bytes(directory / split_file(name),
                              npz_bytes({"train": train.astype(np.int64),
                                         "test": test.astype(np.int64)}))


def preview_png(images: np.ndarray, rows: int = 8, cols: int = 16, seed: int = 0) -> bytes:
    """A PNG grid of ``rows × cols`` random samples on grey, enlarged by an integer factor to
    ≈ 64 pixels a side (32-pixel images 2×), with 2-pixel gutters; grayscale stays grayscale."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(rows * cols, len(images)), replace=False))
    h, w, c = images.shape[1:]
    scale = max(1, 64 // max(h, w))
    ch, cw = scale * h + 2, scale * w + 2
    canvas = np.full((rows * ch + 2, cols * cw + 2, c), 48, dtype=np.uint8)
    for k, row in enumerate(pick):
        i, j = divmod(k, cols)
        big = np.repeat(np.repeat(images[row], scale, axis=0), scale, axis=1)
        canvas[2 + i * ch:i * ch + ch, 2 + j * cw:j * cw + cw] = big
    buffer = io.BytesIO()
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def check_factors(factors: pd.DataFrame | None, specs: list[FactorSpec], n: int) -> None:
    """The factor table must have the specs' columns, n numeric rows and no NaN."""
    names = [s.name for s in specs]
    if factors is None:
        if names:
            raise InputError("factor specs given without a factor table")
        return
    numeric = all(pd.api.types.is_numeric_dtype(t) for t in factors.dtypes)
    if list(factors.columns) != names or len(factors) != n or not numeric \
            or factors.isna().any().any():
        raise InputError(f"factors must be {n} numeric rows of {', '.join(names) or 'nothing'}, "
                         f"got {len(factors)} rows of {', '.join(map(str, factors.columns))}")


def write_dataset(out: str | os.PathLike, *, kind: str, n: int, shape: tuple[int, int, int],
                  chunks: Iterable[np.ndarray], factors: pd.DataFrame | None = None,
                  specs: list[FactorSpec] | None = None,
                  splits: SplitDefs | Callable[[], SplitDefs] = dict,
                  sources: dict[str, str] | None = None, seed: int = 0,
                  extra: dict[str, Any] | None = None, force: bool = False,
                  progress: bool = True, generator: str | None = None) -> Path:
    """Write a dataset directory at ``out``; returns its path.

    ``chunks``: uint8 (k, H, W, C) arrays, n rows in all; ``factors``/``specs``: the factor
    table and its columns; ``splits``: {name: (train, test, manifest info)} or a function
    returning it (computed in a side thread while the images are written); ``sources``:
    {source file name: sha256} of what the images came from; ``extra``: kind-specific
    manifest fields. ``force`` replaces an earlier rdbench dataset only.
    """
    specs = list(specs or [])
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[2] not in CHANNELS or min(shape) < 1 or n < 1:
        raise InputError(f"images must be N ≥ 1 of (H, W, C) with C in {CHANNELS}, got "
                         f"{n} of {shape}")
    check_factors(factors, specs, n)
    with staged_directory(out, force, kind="dataset") as tmp, ThreadPoolExecutor(1) as side:
        tables = side.submit(_write_tables, tmp, factors, splits, n)
        files = {"images.npy": write_images(tmp / "images.npy", chunks, n, shape, progress,
                                            desc=kind)}
        split_sizes = tables.result()
        images = np.load(tmp / "images.npy", mmap_mode="r")
        atomic_write_bytes(tmp / "preview.png", preview_png(images, seed=seed))
        del images
        for path in sorted(tmp.rglob("*")):
            rel = path.relative_to(tmp).as_posix()
            if path.is_file() and rel not in files and not rel.startswith("."):
                files[rel] = sha256_file(path)
        manifest = {**(extra or {}), "format_version": FORMAT_VERSION, "kind": kind,
                    "generator": generator or f"rdbench import {kind}",
                    "rdbench_version": __version__,
                    "images": {"count": n, "shape": list(shape)},
                    "factors": [s.to_json() for s in specs], "seed": int(seed),
                    "splits": split_sizes, "sources": dict(sorted((sources or {}).items())),
                    "files": dict(sorted(files.items()))}
        atomic_write_json(tmp / "manifest.json", manifest)
    return Path(out).expanduser().resolve()


def _write_tables(tmp: Path, factors: pd.DataFrame | None,
                  splits: SplitDefs | Callable[[], SplitDefs], n: int) -> dict[str, dict]:
    """factors.csv and splits/<name>.npz; returns the manifest's ``splits`` entries."""
    if factors is not None and factors.shape[1]:
        atomic_write_text(tmp / "factors.csv", factors.to_csv(index=False))
    defs = splits() if callable(splits) else splits
    sizes = {}
    for name, (train, test, info) in defs.items():
        check_split(train, test, n, f"split {name}")
        write_split(tmp, name, train, test)
        sizes[name] = {**info, "train": int(len(train)), "test": int(len(test))}
    return sizes
