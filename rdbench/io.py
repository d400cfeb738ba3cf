"""File helpers shared by every stage: atomic writes and user-facing input errors.

Every file rdbench writes goes through one of the ``atomic_*`` functions: the content is
written to a temporary file in the same directory, flushed to disk, then renamed over the
target, so a reader (or a killed process) never sees half a file. Directories that are
built in several steps (a dataset, a report) are built in a temporary sibling and renamed
with :func:`commit_directory`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


class InputError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or unparsable file is an :class:`InputError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"corrupt JSON file: {path} ({e})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def check_output_dir(path: str | os.PathLike, force: bool) -> Path:
    """Validate an output directory up front, before any work starts.

    A non-empty existing directory is refused unless ``force``; a path that exists as a file,
    or whose nearest existing parent is not writable, is refused always.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"output path exists and is not a directory: {path}")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise InputError(f"output directory is not empty: {path} (use --force to replace it)")
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output directory is not writable: {parent}")
    return path


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it to ``target`` on success.

    On error the temporary directory is removed and ``target`` is left as it was. With
    ``force`` an existing ``target`` is replaced only after the new one is complete.
    """
    target = check_output_dir(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield tmp
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_directory(tmp: Path, target: Path) -> None:
    """Rename a finished temporary directory onto ``target`` (replacing an old one last)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
