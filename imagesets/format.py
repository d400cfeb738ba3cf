"""The one dataset format of rdbench (SPEC §9): what ``manifest.json`` holds, checked on read.

A dataset is a directory::

    images.npy          uint8 (N, H, W, C), C ∈ {1, 3}, any H, W (memory-mapped on read)
    factors.csv         optional: one numeric row per image, the columns the manifest names
    splits/<name>.npz   sorted, duplicate-free int64 ``train`` and ``test`` rows, disjoint
    manifest.json       the fields below, and the sha256 of every other file
    preview.png         a grid of samples

``manifest.json`` (format version 2)::

    {"format_version": 2, "kind": "mnist", "generator": "rdbench import mnist",
     "images": {"count": N, "shape": [H, W, C]},
     "factors": [{"name": "label", "categorical": true}, {"name": "x", "categorical": false,
                  "range": [lo, hi]}, ...],
     "seed": 0,
     "splits": {"random": {"train": n, "test": m, "rule": "random"}, ...},
     "sources": {"train-images-idx3-ubyte.gz": "<sha256>", ...},
     "files": {"images.npy": "<sha256>", "factors.csv": ..., "splits/random.npz": ..., ...},
     "added_files": {"splits/mine.npz": "<sha256>"},
     ...kind-specific fields}

``files`` are what the writer wrote; their hashes make the dataset's *fingerprint*, part of
every run id trained on it. ``added_files`` are splits the user added later (``rdbench data
split``): verified like the others but outside the fingerprint, so adding a split does not
change the ids of runs already trained (a run on a user split carries that split's sha256 in
its id instead).

A factor's ``range`` is the interval the splits halve and shrink (SPEC §2/§9); without one,
the observed [min, max] is used. Categorical factors have no range.

Datasets written before this format (Tetrominoes, format version 1) are read as they are:
:mod:`imagesets.legacy` translates their manifest in memory before :func:`parse_manifest`
checks it, so their fingerprint, and the run ids built on it, do not change.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from rdbench.io import InputError

FORMAT_VERSION = 2
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CHANNELS = (1, 3)


@dataclass(frozen=True)
class FactorSpec:
    """One factor column: its name, whether it is categorical, its declared range if any."""

    name: str
    categorical: bool = False
    range: tuple[float, float] | None = None
    label: str | None = None  # axis label in figures (e.g. "angle (°)"); default: the name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "categorical": self.categorical}
        if self.range is not None:
            out["range"] = [float(self.range[0]), float(self.range[1])]
        if self.label is not None:
            out["label"] = self.label
        return out


def fingerprint(manifest: dict) -> str:
    """Short content id: the first 16 hex digits of sha256 over the manifest's file hashes."""
    text = json.dumps(manifest.get("files", {}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_file(name: str) -> str:
    """The path of split ``name`` inside a dataset, as the manifest lists it."""
    return f"splits/{name}.npz"


def required_files(manifest: dict) -> list[str]:
    """The files every manifest must list with a checksum, so none escapes verification."""
    files = ["images.npy"]
    if manifest["factors"]:
        files.append("factors.csv")
    return files + [split_file(name) for name in manifest["splits"]]


# ---------------------------------------------------------------- reading a manifest
def parse_manifest(raw: Any, where: str) -> dict:
    """The manifest ``raw`` (parsed JSON) checked and in format-2 form; one-line InputError
    naming ``where`` for any missing key or value of the wrong type."""
    if not isinstance(raw, dict):
        raise InputError(f"corrupt manifest (not a JSON object): {where}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"unsupported or corrupt manifest (format_version {version!r}, "
                         f"expected {FORMAT_VERSION}): {where}")
    manifest = dict(raw)
    manifest["kind"] = _string(raw, "kind", where)
    manifest["images"] = _images(raw.get("images"), where)
    manifest["factors"] = _factors(raw.get("factors", []), where)
    manifest["splits"] = _splits(raw.get("splits", {}), where)
    manifest["files"] = _checksums(raw.get("files"), "files", where)
    manifest["added_files"] = _checksums(raw.get("added_files", {}), "added_files", where)
    manifest["sources"] = _checksums(raw.get("sources", {}), "sources", where)
    manifest["seed"] = _integer(raw.get("seed", 0), "seed", where, low=0)
    listed = manifest["files"].keys() | manifest["added_files"].keys()
    missing = [f for f in required_files(manifest) if f not in listed]
    if missing:
        raise InputError(f"manifest {where} lists no checksum for {missing[0]}, so the dataset "
                         "cannot be verified; write it again with rdbench")
    return manifest


def factor_specs(manifest: dict) -> tuple[FactorSpec, ...]:
    return tuple(FactorSpec(f["name"], f["categorical"],
                            tuple(f["range"]) if f.get("range") is not None else None,
                            f.get("label"))
                 for f in manifest["factors"])


def _fail(where: str, what: str) -> InputError:
    return InputError(f"corrupt manifest ({what}): {where}")


def _string(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(where, f"{key!r} must be a non-empty string")
    return value


def _integer(value: Any, key: str, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, f"{key!r} must be an integer >= {low}, got {value!r}")
    return value


def _images(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, "'images' must be an object with 'count' and 'shape'")
    count = _integer(value.get("count"), "images.count", where)
    shape = value.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
            or shape[2] not in CHANNELS):
        raise _fail(where, f"'images.shape' must be [H, W, C] with C in {CHANNELS}, got {shape!r}")
    return {"count": count, "shape": list(shape)}


def _factors(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise _fail(where, "'factors' must be a list")
    out, seen = [], set()
    for f in value:
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise _fail(where, f"every factor needs a name, got {f!r}")
        if f["name"] in seen:
            raise _fail(where, f"factor {f['name']!r} appears twice")
        seen.add(f["name"])
        if not isinstance(f.get("categorical", False), bool):
            raise _fail(where, f"factor {f['name']!r}: 'categorical' must be true or false")
        entry = {"name": f["name"], "categorical": bool(f.get("categorical", False))}
        rng = f.get("range")
        if rng is not None:
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(_is_number(v) for v in rng) or not rng[0] < rng[1]):
                raise _fail(where, f"factor {f['name']!r}: 'range' must be [lo, hi], lo < hi")
            entry["range"] = [float(rng[0]), float(rng[1])]
        if isinstance(f.get("label"), str):
            entry["label"] = f["label"]
        out.append(entry)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e300


def _splits(value: Any, where: str) -> dict[str, dict]:
    if not isinstance(value, dict):
        raise _fail(where, "'splits' must be an object")
    out = {}
    for name, info in value.items():
        if not SPLIT_NAME.match(name):
            raise _fail(where, f"bad split name {name!r}")
        if not isinstance(info, dict):
            raise _fail(where, f"split {name!r} must be an object")
        for key in ("train", "test"):
            _integer(info.get(key), f"splits.{name}.{key}", where, low=0)
        out[name] = dict(info)
    return out


def _checksums(value: Any, key: str, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(where, f"{key!r} must map names to sha256 hex digests")
    for name, digest in value.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _fail(where, f"{key}[{name!r}] is not a sha256 hex digest")
        if key != "sources" and (name.startswith("/") or ".." in name.split("/")):
            raise _fail(where, f"file {name!r} lies outside the dataset")
    return dict(value)
