"""File helpers shared by every stage: atomic writes, output checks and user-facing errors.

The API of :mod:`rdbench.files` (single files written atomically, rdbench's temporary
names and their leftovers, locks, JSON), :mod:`rdbench.outputs` (what rdbench wrote in an
output directory), :mod:`rdbench.staging` (output directories checked up front and built
in a staged sibling) and :mod:`rdbench.commit` (put in place; what a kill left) is
re-exported here; this module adds the outputs that are
one file: ``rdbench bench --out FILE.json`` and figures (``rdbench data show --out FIG``).

The promise behind ``--force``: rdbench replaces only what it wrote. A directory output is
replaced only when everything in it, at every depth, is listed by its marker (or is
rdbench's own temporary file); a file only when it is an rdbench bench result or figure.
No output is written inside a dataset, nor inside another output without ``--force``.
"""

from __future__ import annotations

import os
from pathlib import Path

from rdbench.commit import ResultsKeptError, commit_directory, remove_leftovers
from rdbench.files import (
    InputError,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    json_or_none,
    read_json,
    remove_temporary_files,
    sha256_file,
    within,
)
from rdbench.outputs import (
    MARKER,
    enclosing_output,
    foreign_paths,
    is_leftover,
    output_kind,
    record_output_files,
    unlisted_paths,
)
from rdbench.staging import (
    check_not_inside_output,
    check_output_dir,
    check_writable_ancestor,
    staged_directory,
)

__all__ = [
    "FIGURE_METADATA", "MARKER", "InputError", "ResultsKeptError",
    "atomic_torch_save", "atomic_write", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "bench_kind", "check_bench_output", "check_figure_output",
    "check_not_inside_output", "check_output_dir", "check_writable_ancestor",
    "commit_directory", "enclosing_output", "exclusive_lock", "foreign_paths",
    "is_leftover", "is_rdbench_figure", "json_or_none", "output_kind", "read_json",
    "record_output_files", "remove_leftovers", "remove_temporary_files",
    "report_bench_result", "sha256_file", "staged_directory", "unlisted_paths", "within",
]


def _check_output_file(path: Path, force: bool) -> None:
    """What every one-file output needs: not inside a dataset (nor, without ``force``,
    inside another output), a writable place, its directory created (trying is the only
    reliable test that it can be)."""
    check_not_inside_output(path, force)
    check_writable_ancestor(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the directory of --out {path}: "
                         f"{e.strerror or e}") from None


# ---------------------------------------------------------------- bench result files
# `rdbench bench` results written before they carried a "bench" key, by their keys.
_LEGACY_BENCH_KEYS = {"data": {"render", "generate"},
                      "eval": {"rate_decomposition", "throughput"}}


def bench_kind(path: str | os.PathLike) -> str | None:
    """Which ``rdbench bench`` wrote the JSON file ``path`` ("train", "data", "eval"), or None."""
    result = json_or_none(Path(path))
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("bench"), str):
        return result["bench"]
    return next((kind for kind, keys in _LEGACY_BENCH_KEYS.items() if keys <= result.keys()),
                None)


def check_bench_output(path: str | os.PathLike | None, force: bool, bench: str) -> Path | None:
    """Validate ``rdbench bench BENCH --out FILE`` before the (minutes of) measuring.

    FILE may be new, an earlier result of the same bench (re-runs into the same path, as
    ``scripts/gpu_checks.sh`` does, just work) or, with ``force``, a result of another
    bench; never a file rdbench did not write, never a directory.
    """
    if path is None:
        return None
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise InputError(f"--out is a directory: {path} (give a file name, e.g. {bench}.json)")
    if path.exists():
        found = bench_kind(path)
        if found is None:
            raise InputError(f"--out exists and is not an `rdbench bench` result: {path} "
                             "(--force replaces only those: move it or choose another --out)")
        if found != bench and not force:
            raise InputError(f"--out exists and is not an earlier `rdbench bench {bench}` "
                             f"result: {path} (use --force to replace it)")
    _check_output_file(path, force)
    return path


def report_bench_result(out: Path | None, result: dict, markdown: str) -> None:
    """Print a bench's Markdown table; write its JSON to ``out`` (checked up front by
    :func:`check_bench_output`), if given, and say so."""
    print(markdown)
    if out is not None:
        atomic_write_json(out, result)
        print(f"wrote {out}")


# ---------------------------------------------------------------- figures
CREATOR = "rdbench"
# `savefig(..., metadata=FIGURE_METADATA)`: a PNG text chunk / the PDF's Creator that tells
# a figure rdbench wrote from a user's file of the same name.
FIGURE_METADATA = {"Creator": CREATOR}
_PNG = b"\x89PNG\r\n\x1a\n"


def is_rdbench_figure(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PNG or PDF rdbench wrote (with :data:`FIGURE_METADATA`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            if head.startswith(b"%PDF"):
                f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
                return b"/Creator (" + CREATOR.encode() in f.read()  # the Info dict is last
    except OSError:
        return False
    return head.startswith(_PNG) and _png_text(head).get("Creator", "").startswith(CREATOR)


def _png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks before the image data of the PNG ``data`` (its first bytes)."""
    text, at = {}, len(_PNG)
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"tEXt":
            key, _, value = data[at + 8:at + 8 + size].partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        at += 12 + size
    return text


def check_figure_output(path: str | os.PathLike, force: bool) -> Path:
    """Validate ``--out FIGURE`` (a .png or .pdf) up front; returns it resolved. An
    existing file is replaced only with ``force``, and only a figure rdbench wrote."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise InputError(f"--out is a directory: {path}")
    if path.exists() and not force:
        raise InputError(f"{path} exists (use --force to replace it)")
    if path.exists() and not is_rdbench_figure(path):
        raise InputError(f"{path} exists and is not a figure rdbench wrote; --force replaces "
                         "only those: move it or choose another --out")
    _check_output_file(path, force)
    return path
