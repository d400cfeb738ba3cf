"""Manifests written before the one format (Tetrominoes, format version 1), translated in
memory to format 2 (the file is left as it is: its fingerprint, and the ids of the runs
trained on it, stay those it had)."""

from __future__ import annotations

from typing import Any

from imagesets.format import FORMAT_VERSION
from imagesets.splits import box_info, cd_box
from rdbench.io import InputError

LEGACY_TETROMINOES = 1  # format_version of Tetrominoes datasets written before this format
_LEGACY_HALF = 81_920  # the reference training-set size of Tetrominoes' cd-N boxes (SPEC §2)


def upgrade(raw: Any, where: str) -> Any:
    """A format-1 Tetrominoes manifest in format 2; anything else unchanged."""
    if isinstance(raw, dict) and raw.get("format_version") == LEGACY_TETROMINOES \
            and raw.get("generator") == "rdbench tetrominoes":
        return _from_legacy_tetrominoes(raw, where)
    return raw


def _from_legacy_tetrominoes(raw: dict, where: str) -> dict:
    """Format-1 Tetrominoes manifest → format 2 (in memory; the file is left as it is)."""
    try:
        counts, ranges = raw["counts"], raw["ranges"]
        names = list(raw["factors"])
        out = dict(raw, format_version=FORMAT_VERSION, kind="tetrominoes",
                   images={"count": counts["images"], "shape": counts["image_shape"]},
                   factors=[{"name": n, "categorical": False, "range": ranges[n]}
                            for n in names])
    except (KeyError, TypeError) as e:
        raise InputError(f"corrupt manifest (missing {e}): {where}") from None
    out.setdefault("display_factors", ["x", "y"])
    out["splits"] = {name: {**info, **_legacy_rule(name, ranges)}
                     for name, info in raw.get("splits", {}).items()}
    return out


def _legacy_rule(name: str, ranges: dict) -> dict:
    """The rule of a format-1 Tetrominoes split, and a cd split's box (from the ranges)."""
    kind, _, size = name.partition("-")
    if name in ("random", "checkerboard"):
        return {"rule": name}
    if kind == "cv":
        return {"rule": "cv"}
    if kind == "cd" and size.isdigit():
        return box_info(cd_box(int(size), _LEGACY_HALF, ranges))
    return {}
