"""Checks every importer makes before reading: which options apply, where the files are."""

from __future__ import annotations

from pathlib import Path

from imagesets.importers import ImportOptions
from rdbench.io import InputError


def check_options(kind: str, options: ImportOptions, *, size: bool = False,
                  channels: bool = False) -> None:
    """Refuse options that do not apply to ``kind`` (silently ignoring ``--size`` would write
    a dataset of another size than the user asked for)."""
    given = {"--size": options.size is not None and not size,
             "--channels": options.channels is not None and not channels,
             "--factors": options.factors is not None,
             "--categorical": bool(options.categorical)}
    wrong = [flag for flag, bad in given.items() if bad]
    if wrong:
        raise InputError(f"{', '.join(wrong)} does not apply to kind {kind}")


def source_dir(path: Path, kind: str, expects: str) -> Path:
    """``--from`` as the directory holding the official files (a file in it is accepted as
    pointing at its directory, so ``--from train-images-idx3-ubyte.gz`` works too)."""
    directory = path if path.is_dir() else path.parent
    if not directory.is_dir():
        raise InputError(f"--from {path} is not a directory (kind {kind} expects {expects})")
    return directory


def source_file(path: Path, names: tuple[str, ...], kind: str) -> Path:
    """``--from`` as one official file: the file itself or a directory holding it."""
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise InputError(f"--from {path} is not {' or '.join(names)} nor a directory holding it "
                     f"(kind {kind})")
