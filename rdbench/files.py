"""Single files: atomic writes, rdbench's temporary names and their leftovers, locks, JSON.

Every file rdbench writes goes through :func:`atomic_write`: the content is written to a
temporary file in the same directory, flushed to disk, then renamed over the target, so a
reader (or a killed process) never sees half a file. Temporary files and directories are
created with the ordinary modes (0o666 / 0o777 less the umask), so the results are as
readable as any file the user creates.

Temporary names are ``.NAME.<token>.tmp`` (files), ``.NAME.<token>.partial`` (directories
being built) and ``.NAME.old-<token>`` (a directory being replaced). The 12 hex digits of
the token are 6 random ones and 6 of a hash of the whole name, so rdbench tells its own
leftovers from a user's file that only looks like one (a name picked at random passes
with a chance of 1 in 16.7 million), and it holds an ``flock`` on each while it is in use:
a leftover is removed only when its lock can be taken, i.e. its process has died.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<token>[0-9a-f]{12})\.(?P<suffix>tmp|partial)"
                        r"|old-(?P<old>[0-9a-f]{12}))$")


# OSErrors that mean the machine, not the input: a full disk, a full quota, a read-only file
# system. ``rdbench.cli`` reports them as one line (exit status 1).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class InputError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


# ---------------------------------------------------------------- temporary names
def _signature(name: str, role: str, random_hex: str) -> str:
    return hashlib.sha256(f"rdbench {role} {name} {random_hex}".encode()).hexdigest()[:6]


def temporary_name(name: str, role: str) -> str:
    """A fresh signed temporary name for ``name``: ``role`` is "tmp", "partial" or "old"."""
    random_hex = secrets.token_hex(3)
    token = random_hex + _signature(name, role, random_hex)
    return f".{name}.old-{token}" if role == "old" else f".{name}.{token}.{role}"


def parse_temporary_name(filename: str) -> tuple[str, str] | None:
    """(target name, role) of a temporary name rdbench made, or None for any other name
    (including one of the same shape whose signature does not match)."""
    match = _TEMPORARY.match(filename)
    if match is None:
        return None
    role = match["suffix"] or "old"
    token = match["token"] or match["old"]
    if _signature(match["name"], role, token[:6]) != token[6:]:
        return None
    return match["name"], role


def create_temporary(parent: Path, name: str, role: str, create: Callable[[Path], T],
                     ) -> tuple[Path, T]:
    """``create(path)`` for a fresh signed temporary name in ``parent`` (retried if taken).

    Used instead of ``tempfile.mkstemp``/``mkdtemp``, which create owner-only entries: here
    the mode is the caller's (0o666 / 0o777) and the kernel applies the umask.
    """
    for _ in range(100):
        path = parent / temporary_name(name, role)
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


# ---------------------------------------------------------------- locks
def _flock(fd: int, blocking: bool = False) -> bool:
    """Take an exclusive ``flock`` on ``fd``; False when another open file holds one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def open_locked(path: Path, blocking: bool = False) -> int | None:
    """An fd of the existing file or directory ``path`` (never through a symlink) with an
    exclusive ``flock`` on it, or None when another process holds the lock or ``path`` is
    gone or a symlink. The OS releases the lock when the fd is closed or its process dies."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if _flock(fd, blocking):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to hold an exclusive ``flock`` on ``path`` (created if absent) for the with-block,
    without waiting: yields True when held, False when another process holds it. The OS
    frees it when its holder dies. Where there is no ``flock`` (not POSIX) it yields True."""
    with open(path, "a") as f:
        yield _flock(f.fileno())


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not removed or replaced)."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                   0o666)


def _create_locked_file(path: Path) -> tuple[Path, int]:
    """A new signed temporary file beside ``path``, open and locked (see :func:`open_locked`):
    retried if another process's cleanup removed it between its creation and the lock."""
    while True:
        tmp, fd = create_temporary(path.parent, path.name, "tmp", _open_new_file)
        _flock(fd, blocking=True)
        if _same_file(fd, tmp):
            return tmp, fd
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``.

    Leftovers of earlier writes of ``path`` that were killed are removed first. On an
    error the temporary file is removed and ``path`` is as it was; an ``OSError`` without a
    file name (a full disk during ``write``) gets ``path`` as its name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temporary_files(path.parent, path.name)
    tmp, fd = _create_locked_file(path)
    try:
        with os.fdopen(fd, "wb") as f:  # the lock is held until the rename is done
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)
        raise
    _fsync_dir(path.parent)
    return path


def remove_temporary_files(parent: Path, name: str) -> list[Path]:
    """Remove the temporary files (``.NAME.<token>.tmp``) of ``name`` in ``parent`` that
    killed writes left: only signed names, only those whose lock can be taken."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if parse_temporary_name(entry.name) == (name, "tmp") \
                    and entry.is_file(follow_symlinks=False) and _remove_unlocked(Path(entry)):
                removed.append(Path(entry.path))
    return removed


def _remove_unlocked(path: Path) -> bool:
    fd = open_locked(path)
    if fd is None:
        return False
    try:
        if not _same_file(fd, path):
            return False
        path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------- reading
def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or unparsable file is an :class:`InputError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"corrupt JSON file: {path} ({e})") from None


def json_or_none(path: Path) -> Any:
    """The parsed JSON of ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path``, with every symlink resolved, lies inside ``root`` (resolved too):
    what a reader checks before following a link it found among its inputs."""
    resolved, root = Path(path).resolve(), Path(root).resolve()
    return resolved == root or root in resolved.parents
