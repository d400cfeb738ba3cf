"""Read a dataset directory of the one format (:mod:`imagesets.format`): memory-mapped,
checked up front, verified against the manifest's sha256 on request.

Every later stage (training, evaluation, the report, the kp analyses) opens datasets
through :func:`load` / :func:`load_verified` and nothing else, whatever wrote them.
"""

from __future__ import annotations

import os
import re
import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from imagesets.format import (
    FactorSpec,
    factor_specs,
    fingerprint,
    parse_manifest,
    split_file,
)
from imagesets.legacy import upgrade
from imagesets.splits import check_split
from rdbench.io import InputError, json_or_none, sha256_file

# factors.csv must read back bit for bit: pandas < 3.1 parses floats with a fast parser that
# can be off in the last bit unless asked for "round_trip" (deprecated from 3.1, exact there)
_EXACT_FLOATS = (
    {} if tuple(map(int, re.findall(r"\d+", pd.__version__)[:2])) >= (3, 1)
    else {"float_precision": "round_trip"}
)
_SIZED = re.compile(r"^(cv|cd)-(\d+)$")


class Split(NamedTuple):
    """Sorted int64 row indices; unpacks as ``train, test = data.split(name)``."""

    train: np.ndarray
    test: np.ndarray


class ImageSet:
    """A dataset directory: ``.images`` (memmap uint8 (N, H, W, C)), ``.factors``, splits.

    Construct with :func:`load`, which checks the structure up front; :meth:`verify`
    checks every file's sha256 against the manifest (reads every byte).
    """

    def __init__(self, path: Path, manifest: dict, images: np.ndarray, factors: pd.DataFrame):
        self.path = path
        self.manifest = manifest
        self.images = images
        self.factors = factors
        self.factor_specs: tuple[FactorSpec, ...] = factor_specs(manifest)
        self._splits: dict[str, Split] = {}

    def __len__(self) -> int:
        return int(self.manifest["images"]["count"])

    def __repr__(self) -> str:
        h, w, c = self.manifest["images"]["shape"]
        return f"ImageSet({str(self.path)!r}, kind={self.kind!r}, n={len(self)}, {h}×{w}×{c})"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W): the shape a model sees one image in."""
        h, w, c = self.manifest["images"]["shape"]
        return c, h, w

    @property
    def split_names(self) -> tuple[str, ...]:
        """Split names in reading order: standard, random, checkerboard, cv-N and cd-N by N,
        then the rest (user splits) by name."""
        return tuple(sorted(self.manifest["splits"], key=split_order))

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits identifying the content (sha256 over the manifest's file hashes)."""
        return fingerprint(self.manifest)

    def split_info(self, name: str) -> dict[str, Any]:
        """The manifest's entry of split ``name`` (sizes, rule, a cd split's box)."""
        self._check_name(name)
        return dict(self.manifest["splits"][name])

    def split(self, name: str) -> Split:
        """The split ``name``, checked (sorted, disjoint, in range, non-empty, the sizes the
        manifest states); InputError listing the valid names if there is none."""
        self._check_name(name)
        if name not in self._splits:
            self._splits[name] = _read_split(self.path / split_file(name), len(self),
                                             self.manifest["splits"][name])
        return self._splits[name]

    def _check_name(self, name: str) -> None:
        if name not in self.manifest["splits"]:
            raise InputError(f"unknown split {name!r} of dataset {self.path}; valid splits: "
                             f"{', '.join(self.split_names)}")

    def verify(self) -> list[str]:
        """Problems found: a missing file or a sha256 that differs from the manifest's."""
        problems = []
        listed = {**self.manifest["files"], **self.manifest["added_files"]}
        for rel, expected in listed.items():
            path = self.path / rel
            if path.is_symlink() or not path.is_file():
                problems.append(f"missing file: {rel}" if not path.exists()
                                else f"not a regular file: {rel}")
            elif sha256_file(path) != expected:
                problems.append(f"checksum mismatch: {rel}")
        return problems


def split_order(name: str) -> tuple:
    """Sort key of split names: standard, random, checkerboard, cv-N by N, cd-N by N, others."""
    fixed = {"standard": 0, "random": 1, "checkerboard": 2}
    if name in fixed:
        return (fixed[name], 0, name)
    m = _SIZED.match(name)
    if m:
        return (3 if m.group(1) == "cv" else 4, int(m.group(2)), name)
    return (5, 0, name)


def _read_split(path: Path, n: int, info: dict) -> Split:
    try:
        with np.load(path, allow_pickle=False) as z:
            train, test = np.asarray(z["train"]), np.asarray(z["test"])
    except FileNotFoundError:
        raise InputError(f"missing split file: {path}") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"corrupt split file: {path} ({e})") from None
    check_split(train, test, n, f"split file {path}")
    if (len(train), len(test)) != (info["train"], info["test"]):
        raise InputError(f"split file {path} holds {len(train)}/{len(test)} rows, the "
                         f"manifest says {info['train']}/{info['test']}")
    return Split(train, test)


def _read_images(path: Path, n: int, shape: list[int]) -> np.ndarray:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"corrupt or truncated file: {path} ({e})") from None
    want = (n, *shape)
    if images.dtype != np.uint8 or images.shape != want:
        raise InputError(f"corrupt file: {path} (dtype {images.dtype}, shape {images.shape}, "
                         f"expected uint8 {want})")
    return images


def _read_factors(path: Path, n: int, specs: tuple[FactorSpec, ...]) -> pd.DataFrame:
    names = [s.name for s in specs]
    if not names:
        return pd.DataFrame(index=pd.RangeIndex(n))
    try:
        factors = pd.read_csv(path, **_EXACT_FLOATS)
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"corrupt file: {path} ({e})") from None
    numeric = all(pd.api.types.is_numeric_dtype(t) for t in factors.dtypes)
    if list(factors.columns) != names or len(factors) != n or not numeric \
            or factors.isna().any().any():
        raise InputError(f"corrupt file: {path} (expected {n} numeric rows of "
                         f"{','.join(names)})")
    return factors


def load(path: str | os.PathLike) -> ImageSet:
    """Open a dataset directory; InputError if it is missing, not a dataset, or damaged."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError(f"no dataset directory at {path}")
    if not (path / "manifest.json").is_file():
        raise InputError(f"not an rdbench dataset (no manifest.json): {path}")
    raw = json_or_none(path / "manifest.json")
    if raw is None:
        raise InputError(f"unreadable or corrupt manifest: {path / 'manifest.json'}")
    where = str(path / "manifest.json")
    manifest = parse_manifest(upgrade(raw, where), where)
    images = _read_images(path / "images.npy", manifest["images"]["count"],
                          manifest["images"]["shape"])
    factors = _read_factors(path / "factors.csv", manifest["images"]["count"],
                            factor_specs(manifest))
    return ImageSet(path, manifest, images, factors)


def load_verified(path: str | os.PathLike) -> ImageSet:
    """``load`` and check every file against the manifest's sha256 (≈0.4 s per 500 MB):
    what commands that train or evaluate on a dataset open it with."""
    data = load(path)
    problems = data.verify()
    if problems:
        raise InputError(f"dataset {data.path} is damaged ({problems[0]}"
                         f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); "
                         "write it again (`rdbench data generate` or `rdbench data import`)")
    return data
