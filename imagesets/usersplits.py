"""``rdbench data split DIR NAME``: add the user's own train/test split to a dataset.

Rows come from a pandas query on the factors (``--train "shape == 2 and scale > 0.8"``,
``--test`` defaulting to every other row) or from an ``.npz`` with ``train`` and ``test``
row arrays (``--from``; never unpickled). The split is checked (non-empty, disjoint, in
range, no duplicate rows), written as ``splits/NAME.npz`` and recorded in the manifest
(``splits`` and ``added_files``), which is rewritten atomically; the dataset's fingerprint
(its original files) and so the ids of runs already trained on it do not change.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagesets.data import load_verified
from imagesets.format import SPLIT_NAME, split_file
from imagesets.splits import check_split, query_split
from imagesets.writer import write_split
from rdbench.io import (
    MARKER,
    InputError,
    atomic_write_json,
    json_or_none,
    record_output_files,
    sha256_file,
)


def add_split(directory: str | os.PathLike, name: str, *, train_query: str | None = None,
              test_query: str | None = None, from_file: str | os.PathLike | None = None,
              force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Add split ``name`` to the dataset at ``directory``; returns its (train, test) rows."""
    if not SPLIT_NAME.match(name):
        raise InputError(f"split name must be letters, digits, '.', '_' or '-' (at most 100), "
                         f"got {name!r}")
    with _dataset_lock(Path(directory)):
        data = load_verified(directory)
        existing = data.manifest["splits"].get(name)
        if existing is not None and existing.get("rule") != "user":
            raise InputError(f"split {name!r} is one the dataset was written with; choose "
                             "another name")
        if existing is not None and not force:
            raise InputError(f"split {name!r} exists (use --force to replace it)")
        if from_file is not None:
            train, test = _rows_from_file(Path(from_file), len(data))
            how = {"from": Path(from_file).name}
        else:
            train, test = query_split(data.factors, train_query, test_query)
            how = {"train_query": train_query, "test_query": test_query}
        check_split(train, test, len(data), f"split {name!r}")
        path = write_split(data.path, name, train, test)
        _record(data.path, name, {**how, "rule": "user", "train": int(len(train)),
                                  "test": int(len(test))}, sha256_file(path))
    return train, test


def _rows_from_file(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``train`` and ``test`` of an .npz as sorted int64 (integers only; never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [np.asarray(z[key]) for key in ("train", "test")]
    except FileNotFoundError:
        raise InputError(f"--from {path} does not exist") from None
    except KeyError as e:
        raise InputError(f"--from {path} has no array {e} (it needs 'train' and 'test')") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"--from {path} is not a readable .npz ({e})") from None
    out = []
    for key, rows in zip(("train", "test"), arrays, strict=True):
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise InputError(f"--from {path}: {key} must be a 1-D array of integer rows, got "
                             f"{rows.dtype} {rows.shape}")
        out.append(np.sort(rows.astype(np.int64)))
    return out[0], out[1]


def _record(directory: Path, name: str, info: dict, digest: str) -> None:
    """The manifest with split ``name`` and its file's sha256, rewritten atomically."""
    manifest = json_or_none(directory / "manifest.json")
    manifest.setdefault("splits", {})[name] = info
    manifest.setdefault("added_files", {})[split_file(name)] = digest
    atomic_write_json(directory / "manifest.json", manifest)
    if (directory / MARKER).exists():  # the dataset's own files: what --force may replace
        record_output_files(directory, [split_file(name)])


@contextlib.contextmanager
def _dataset_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on the dataset directory itself, so two ``data split`` never
    rewrite the manifest at once (no lock file is left in the dataset)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        raise InputError(f"no dataset directory at {directory} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another command is changing {directory}; try again") from None
        yield
    finally:
        os.close(fd)
