"""Read a dataset written by :func:`tetrominoes.generate` (memory-mapped, validated)."""

from __future__ import annotations

import os
import re
import zipfile
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from rdbench.io import InputError, read_json, sha256_file
from tetrominoes.build import FORMAT_VERSION, fingerprint
from tetrominoes.factors import FACTOR_NAMES
from tetrominoes.raster import SIZE
from tetrominoes.splits import SPLIT_NAMES

# factors.csv must read back bit for bit: pandas < 3.1 parses floats with a fast parser that
# can be off in the last bit unless asked for "round_trip" (deprecated from 3.1, exact there)
_EXACT_FLOATS = (
    {} if tuple(map(int, re.findall(r"\d+", pd.__version__)[:2])) >= (3, 1)
    else {"float_precision": "round_trip"}
)


class Split(NamedTuple):
    """Sorted int64 row indices; unpacks as ``train, test = data.split(name)``."""

    train: np.ndarray
    test: np.ndarray


class Tetrominoes:
    """A dataset directory: ``.images`` (memmap uint8 (N, 32, 32, 3)), ``.factors``, splits.

    Construct with :func:`load`, which checks the structure up front; :meth:`verify`
    checks every file's sha256 against the manifest (reads every byte: seconds).
    """

    def __init__(self, path: Path, manifest: dict, images: np.ndarray, factors: pd.DataFrame):
        self.path = path
        self.manifest = manifest
        self.images = images
        self.factors = factors
        self._splits: dict[str, Split] = {}

    def __len__(self) -> int:
        return len(self.factors)

    def __repr__(self) -> str:
        return f"Tetrominoes({str(self.path)!r}, n={len(self)}, seed={self.seed})"

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(n for n in SPLIT_NAMES if n in self.manifest.get("splits", {}))

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits identifying the content (sha256 over the manifest's file hashes)."""
        return fingerprint(self.manifest)

    def split(self, name: str) -> Split:
        """The split ``name``; InputError listing the valid names if there is none."""
        if name not in self.split_names:
            raise InputError(f"unknown split {name!r}; valid splits: {', '.join(self.split_names)}")
        if name not in self._splits:
            self._splits[name] = _read_split(self.path / "splits" / f"{name}.npz", len(self))
        return self._splits[name]

    def verify(self) -> list[str]:
        """Problems found: a missing file or a sha256 that differs from the manifest's."""
        problems = []
        for rel, expected in self.manifest.get("files", {}).items():
            path = self.path / rel
            if not path.is_file():
                problems.append(f"missing file: {rel}")
            elif sha256_file(path) != expected:
                problems.append(f"checksum mismatch: {rel}")
        return problems


def _read_split(path: Path, n: int) -> Split:
    try:
        with np.load(path, allow_pickle=False) as z:
            train, test = np.asarray(z["train"]), np.asarray(z["test"])
    except FileNotFoundError:
        raise InputError(f"missing split file: {path}") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"corrupt split file: {path} ({e})") from None
    for a in (train, test):
        if a.dtype != np.int64 or a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= n)):
            raise InputError(f"corrupt split file: {path} (bad row indices)")
    return Split(train, test)


def _read_images(path: Path, n: int) -> np.ndarray:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"corrupt or truncated file: {path} ({e})") from None
    if images.dtype != np.uint8 or images.shape != (n, SIZE, SIZE, 3):
        raise InputError(f"corrupt file: {path} (dtype {images.dtype}, shape {images.shape}, "
                         f"expected uint8 {(n, SIZE, SIZE, 3)})")
    return images


def _read_factors(path: Path, n: int) -> pd.DataFrame:
    try:
        factors = pd.read_csv(path, dtype="float64", **_EXACT_FLOATS)
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"corrupt file: {path} ({e})") from None
    if list(factors.columns) != list(FACTOR_NAMES) or len(factors) != n:
        raise InputError(f"corrupt file: {path} (expected {n} rows of {','.join(FACTOR_NAMES)})")
    return factors


def load(path: str | os.PathLike) -> Tetrominoes:
    """Open a dataset directory; InputError if it is missing, not a dataset, or damaged."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"no dataset directory at {path}")
    if not (path / "manifest.json").is_file():
        raise InputError(f"not a Tetrominoes dataset (no manifest.json): {path}")
    manifest = read_json(path / "manifest.json")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise InputError(f"unsupported or corrupt manifest (format_version {version}, "
                         f"expected {FORMAT_VERSION}): {path / 'manifest.json'}")
    try:
        n = int(manifest["counts"]["images"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"corrupt manifest (no image count): {path / 'manifest.json'}") from None
    images = _read_images(path / "images.npy", n)
    factors = _read_factors(path / "factors.csv", n)
    return Tetrominoes(path, manifest, images, factors)


def load_verified(path: str | os.PathLike) -> Tetrominoes:
    """``load`` and check every file against the manifest's sha256 (0.4 s for the 503 MB of
    images.npy): what commands that train or evaluate on a dataset open it with."""
    data = load(path)
    problems = data.verify()
    if problems:
        raise InputError(f"dataset {data.path} is damaged ({problems[0]}"
                         f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); "
                         "regenerate it with `rdbench data generate`")
    return data


def images_as_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) → float32 (N, 3, 32, 32) in [0, 1] (the models' view, v = u/255)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
