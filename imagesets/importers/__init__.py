"""Importers: published datasets and the user's own images into the one format (SPEC §9).

One module per source format in this package; each defines ``IMPORTERS = {kind: Importer}``
and is found by :func:`registry` (a new dataset kind is one new module). An importer's
``read(path, options)`` opens the distribution files *as their publishers ship them*, checks
their format up front (headers, sizes) and returns a :class:`Source`: image count and shape,
a lazy iterator of uint8 chunks (the pixels are read while the dataset is written, in bounded
memory), the factor table, the publisher's train/test partition if any, and the sha256 of
every file read. :func:`import_dataset` adds the splits and writes the directory.

Nothing read is ever unpickled (``np.load(..., allow_pickle=False)``; h5py datasets; raw
bytes). A file that fails its format check raises :class:`~rdbench.io.InputError` (one line,
exit 2) before anything is written, or — found while streaming — removes the partial output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imagesets.format import FactorSpec
from rdbench.io import InputError
from rdbench.plugins import collect

CHUNK = 4096  # images per chunk an importer yields (64×64×3: 50 MB)


@dataclass(frozen=True)
class RemoteFile:
    """One official distribution file: its name, its path below the publisher's base URL,
    and its pinned sha256 (what ``--download`` fetches and verifies)."""

    name: str
    sha256: str
    path: str | None = None  # below the base URL; default: the name

    @property
    def url_path(self) -> str:
        return self.path or self.name


@dataclass(frozen=True)
class ImportOptions:
    """What the user may set on ``rdbench data import`` (each importer uses what applies)."""

    size: int | None = None  # side S of the square images (smallnorb, celeba, folder)
    channels: int | None = None  # 1 or 3 (folder)
    factors: Path | None = None  # a factor CSV (npy)
    categorical: tuple[str, ...] = ()  # factor columns of that CSV that are categorical
    seed: int = 0  # seed of the random splits
    progress: bool = True


@dataclass
class Source:
    """What an importer read: everything :func:`imagesets.writer.write_dataset` needs."""

    n: int
    shape: tuple[int, int, int]  # (H, W, C)
    chunks: Iterable[np.ndarray]  # uint8 (k, H, W, C), lazily read
    sources: dict[str, str]  # file name -> sha256
    factors: pd.DataFrame | None = None
    specs: list[FactorSpec] = field(default_factory=list)
    standard: tuple[np.ndarray, np.ndarray] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Importer:
    """A dataset kind: ``read(path, options) -> Source``, what ``--from`` expects (``expects``,
    for help and errors), and for ``--download`` the official files and base URL."""

    kind: str
    read: Callable[[Path, ImportOptions], Source]
    expects: str
    base_url: str | None = None
    files: tuple[RemoteFile, ...] = ()
    default_size: int | None = None
    homepage: str | None = None  # where to get the files by hand (kinds without --download)


@cache
def registry() -> dict[str, Importer]:
    """Every importer of the modules in this package, by kind."""
    return dict(sorted(collect(__name__, "IMPORTERS", "dataset kind").items()))


def get_importer(kind: str) -> Importer:
    importers = registry()
    if kind not in importers:
        raise InputError(f"unknown dataset kind {kind!r}; valid: {', '.join(importers)}")
    return importers[kind]


def import_dataset(kind: str, source: str | os.PathLike | None, out: str | os.PathLike, *,
                   options: ImportOptions = ImportOptions(), force: bool = False,
                   download: bool = False, mirror: str | None = None,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """Read ``kind`` from ``source`` (or fetch its official files with ``download``) and
    write it as a dataset at ``out``, with the standard (if any), random, cv-N and, where
    factors allow, checkerboard and cd-N splits. Every input is checked before any work."""
    from imagesets.splits import default_splits
    from imagesets.writer import write_dataset
    from rdbench.io import check_output_dir

    importer = get_importer(kind)
    target = check_output_dir(out, force, kind="dataset",
                              inputs=[source] if source is not None else [])
    if download and source is not None:
        raise InputError("give --from PATH or --download, not both")
    if download:
        from imagesets.download import fetch

        source = fetch(importer, mirror=mirror, cache_dir=cache_dir, progress=options.progress)
    elif source is None:
        raise InputError(f"give --from PATH ({importer.expects}) or --download")
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise InputError(f"--from {path} does not exist (expected {importer.expects})")
    read = importer.read(path, options)
    if read.n < 2:
        raise InputError(f"{path} holds {read.n} image(s); a dataset needs at least 2 (one to "
                         "train on, one to test)")
    specs = list(read.specs)
    factors = read.factors

    def splits() -> dict:
        return default_splits(factors if factors is not None else pd.DataFrame(index=range(
            read.n)), specs, read.n, options.seed, read.standard)

    extra = {**read.extra, "sources_verified": bool(download)}
    return write_dataset(target, kind=kind, n=read.n, shape=read.shape, chunks=read.chunks,
                         factors=factors, specs=specs, splits=splits, sources=read.sources,
                         seed=options.seed, extra=extra, force=force,
                         progress=options.progress)


def chunked(n: int, read_rows: Callable[[int, int], np.ndarray], size: int = CHUNK
            ) -> Iterable[np.ndarray]:
    """uint8 chunks ``read_rows(start, stop)`` covering rows 0..n, ``size`` at a time."""
    for start in range(0, n, size):
        yield read_rows(start, min(n, start + size))


def find_file(directory: Path, names: Iterable[str], what: str) -> Path:
    """The first of ``names`` that exists in ``directory`` (e.g. ``x`` or ``x.gz``); a
    one-line InputError naming what was expected otherwise."""
    names = list(names)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise InputError(f"{directory} holds no {what} (looked for {' or '.join(names)})")
