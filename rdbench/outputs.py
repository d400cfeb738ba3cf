"""What rdbench wrote in an output directory, and so what ``--force`` may replace there.

Every directory rdbench stages (a dataset, a report, a kp analysis; see
:mod:`rdbench.staging`) holds a :data:`MARKER` naming its kind and listing every file it
wrote. Something in an output is rdbench's when the marker lists it (a dataset's manifest
counts too), when it is the marker itself, or when it is one of rdbench's own temporary
files (:mod:`rdbench.files`); anything else at any depth (a user's file, an extra
directory, a symlink) is foreign. An output written before markers listed files is
recognised only when every file in it is one its kind writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from rdbench.files import (
    InputError,
    atomic_write_json,
    json_or_none,
    open_locked,
    parse_temporary_name,
)

MARKER = ".rdbench-output"  # {"kind", "entries", "files", ...} in every staged directory


# ---------------------------------------------------------------- what rdbench wrote
class _Legacy(NamedTuple):
    signatures: tuple[tuple[str, ...], ...]  # any one set of these files marks the kind
    patterns: tuple[str, ...]  # every file such an output holds matches one of these


def _figure(stem: str) -> tuple[str, str]:
    return f"{stem}.png", f"{stem}.pdf"


_UNIQUENESS_RUN = ("trials.csv", "summary.csv", "summary.md", "config.json",
                   *_figure("angle_vs_elbo"))
# Outputs written before the marker listed its files, recognised by their files.
_LEGACY: dict[str, _Legacy] = {
    "report": _Legacy((("index.html", "report.md", "summary.csv"),),
                      ("runs.csv", "summary.csv", "summary.md", "summary.tex", "report.md",
                       "index.html", "figures/*.png", "figures/*.pdf")),
    "kp-objectives": _Legacy((("objectives.csv", "objectives_summary.csv"),),
                             ("objectives.csv", "objectives_summary.csv",
                              *_figure("objectives"))),
    "kp-jacobian": _Legacy((("jacobian.csv", "jacobian_summary.csv"),),
                           ("jacobian.csv", "jacobian_summary.csv", "jacobian_matrices.npz",
                            *_figure("jacobian_heatmaps"), *_figure("jacobian_alignment"))),
    "kp-uniqueness": _Legacy((("trials.csv", "summary.md", "config.json"),
                              ("orientations.csv", "orientations.md", "config.json"),
                              ("decoder_std.csv", "decoder_std.md")),
                             (*_UNIQUENESS_RUN, "orientations.csv", "orientations.md",
                              *_figure("angle_vs_orientation"), "decoder_std.csv",
                              "decoder_std.md", *_figure("angle_vs_decoder_std"),
                              *(f"decoder-std-*/{name}" for name in _UNIQUENESS_RUN))),
}


def _matches(pattern: str, rel: str, prefix: bool = False) -> bool:
    """``rel`` matches ``pattern`` segment by segment (``*`` never crosses a ``/``); with
    ``prefix``, ``rel`` is a directory some match of ``pattern`` lies in."""
    want, got = pattern.split("/"), rel.split("/")
    if len(got) > len(want) or (len(got) == len(want)) == prefix:
        return False
    return all(fnmatchcase(g, w) for g, w in zip(got, want, strict=False))


@dataclass(frozen=True)
class Claim:
    """What rdbench says it wrote in an output: listed files (an empty directory as
    ``"d/"``), or, for one written before the listing, patterns of its kind's files."""

    kind: str
    files: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()

    def has_file(self, rel: str) -> bool:
        return rel in self.files or any(_matches(p, rel) for p in self.patterns)

    def has_dir(self, rel: str) -> bool:
        inside = rel + "/"
        return any(f.startswith(inside) for f in self.files) \
            or any(_matches(p, rel, prefix=True) for p in self.patterns)


def read_marker(path: Path) -> dict | None:
    """The marker of the directory ``path`` when it is one (a JSON object with a kind)."""
    marker = json_or_none(path / MARKER)
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def _dataset_files(path: Path) -> frozenset[str] | None:
    """The files a dataset's manifest lists (its ``files`` and ``added_files``, with itself
    and the preview), or None when ``path`` holds no manifest rdbench wrote."""
    manifest = json_or_none(path / "manifest.json")
    if not isinstance(manifest, dict) or not str(manifest.get("generator")).startswith("rdbench"):
        return None
    listed = [name for key in ("files", "added_files")
              for name in (manifest.get(key) if isinstance(manifest.get(key), dict) else ())]
    return frozenset(map(str, listed)) | {"manifest.json", "preview.png"}


def claim_of(path: Path) -> Claim | None:
    """What claims ``path`` as rdbench's: its marker, a dataset manifest, or (for outputs
    from before the marker) its kind's files when every file in it is one; else None."""
    marker, dataset = read_marker(path), _dataset_files(path)
    if marker is not None:
        kind, files = marker["kind"], marker.get("files")
        listed = frozenset(map(str, files)) if isinstance(files, list) else frozenset()
        patterns = () if isinstance(files, list) or kind not in _LEGACY \
            else _LEGACY[kind].patterns
        return Claim(kind, listed | (dataset or frozenset()) if kind == "dataset" else listed,
                      patterns)
    if dataset is not None:
        return Claim("dataset", dataset)
    for kind, legacy in _LEGACY.items():
        if any(all((path / name).is_file() for name in names) for names in legacy.signatures):
            claim = Claim(kind, patterns=legacy.patterns)
            if next(iter_foreign(path, claim), None) is None:
                return claim
    return None


def _is_temporary_file(entry: os.DirEntry) -> bool:
    found = parse_temporary_name(entry.name)
    return found is not None and found[1] == "tmp" and entry.is_file(follow_symlinks=False)


def iter_foreign(root: Path, claim: Claim, rel: str = "",
             top_debris: tuple[str, ...] = (MARKER,)) -> Iterator[str]:
    """Paths below ``root`` (relative, POSIX, in sorted order) that ``claim`` does not
    cover: a symlink, a directory no claimed file lies in (not descended), an unclaimed
    file. rdbench's temporary files and ``top_debris`` at the top are its own."""
    with os.scandir(root / rel) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        child = rel + entry.name
        if entry.is_symlink():
            yield child
        elif entry.is_dir():
            if claim.has_dir(child):
                yield from iter_foreign(root, claim, child + "/", top_debris)
            else:
                yield child
        elif not (claim.has_file(child) or _is_temporary_file(entry)
                  or (child in top_debris)):
            yield child


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of rdbench output directory ``path`` is (by its marker or manifest; one
    from before the marker only when every file in it is its kind's), or None."""
    claim = claim_of(Path(path))
    return claim.kind if claim else None


def foreign_paths(path: str | os.PathLike) -> list[str]:
    """Paths in the directory ``path``, at every depth, that rdbench did not write there
    (relative, POSIX, sorted; a foreign directory is named, not its content); every
    entry when nothing claims ``path`` as an rdbench output."""
    path = Path(path)
    return list(iter_foreign(path, claim_of(path) or Claim("")))


def unlisted_paths(path: str | os.PathLike, patterns: Iterable[str]) -> list[str]:
    """Paths in the directory ``path``, at every depth, that match none of ``patterns``
    (``config.json``, ``tb/*``; ``*`` within one name) and are not rdbench's temporary
    files: for directories rdbench writes into without a marker (a run directory)."""
    return list(iter_foreign(Path(path), Claim("", patterns=tuple(patterns)), top_debris=()))


def is_leftover(path: str | os.PathLike) -> bool:
    """Whether ``path`` is what a killed rdbench process left: a temporary file or staged
    directory of rdbench's (its signed name, see :mod:`rdbench.files`; never a user's
    entry that merely looks like one) that no live process holds."""
    path = Path(path)
    if parse_temporary_name(path.name) is None or path.is_symlink():
        return False
    fd = open_locked(path)
    if fd is not None:
        os.close(fd)
    return fd is not None


def enclosing_output(path: str | os.PathLike) -> tuple[Path, str] | None:
    """The nearest directory above ``path`` that is an rdbench output (a marker naming
    its kind, or a dataset's manifest) and that kind, or None: what keeps one command
    from writing into another's output (a report into ``DATASET/splits/x``)."""
    for parent in Path(path).expanduser().resolve().parents:
        marker = read_marker(parent)
        if marker is not None:
            return parent, marker["kind"]
        if _dataset_files(parent) is not None:
            return parent, "dataset"
    return None


def file_list(root: Path) -> list[str]:
    """Every file below ``root`` (relative, POSIX, sorted; an empty directory as ``d/``),
    without the marker, symlinks and temporary files."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if prefix and not dirnames and not filenames:
            found.append(prefix)
        for name in filenames:
            path = Path(dirpath) / name
            if prefix + name == MARKER or path.is_symlink() \
                    or parse_temporary_name(name) is not None:
                continue
            found.append(prefix + name)
    return sorted(found)


def write_marker(directory: Path, kind: str, files: Iterable[str],
                 staged_as: str | None = None) -> None:
    """Write ``directory``'s marker: its kind, its top-level entries, every file and, in a
    staged directory, that directory's name (what tells a finished one, see
    :mod:`rdbench.staging`)."""
    files = sorted(set(files))
    marker = {"kind": kind, "entries": sorted({f.split("/")[0] for f in files}),
              "files": files}
    atomic_write_json(directory / MARKER, marker | ({"staged_as": staged_as} if staged_as else {}))


def record_output_files(directory: str | os.PathLike, relpaths: Iterable[str]) -> Path:
    """List ``relpaths`` (relative POSIX paths of files a command adds to the existing
    rdbench output ``directory``, e.g. ``splits/NAME.npz`` in a dataset) in its marker, so
    a later ``--force`` still knows them as rdbench's. The marker is rewritten atomically,
    keeping what it listed (for an output from before the listing: its kind's files found
    there). Call it before writing the files: a kill in between leaves none unlisted."""
    directory = Path(directory)
    claim = claim_of(directory)
    if claim is None:
        raise InputError(f"{directory} is not an rdbench output (no {MARKER}, no manifest)")
    added = {_checked_relpath(rel) for rel in relpaths}
    ours = {rel for rel in file_list(directory) if claim.has_file(rel)}
    write_marker(directory, claim.kind, claim.files | ours | added)
    return directory / MARKER


def _checked_relpath(rel: str) -> str:
    path = PurePosixPath(str(rel))
    if path.is_absolute() or not path.parts or ".." in path.parts \
            or path.as_posix() == MARKER:
        raise ValueError(f"not a relative path of a file in an output: {rel!r}")
    return path.as_posix()
