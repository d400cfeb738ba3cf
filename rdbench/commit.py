"""Putting a finished staged directory in place, and finishing or undoing what a kill left.

A finished staged directory (``.NAME.<token>.partial``, its :data:`MARKER` naming it) is
moved onto its target: by an atomic exchange where the system has one
(``renameat2(RENAME_EXCHANGE)``), else by two renames (the earlier output aside as
``.NAME.old-<token>``, then the new one in); into the target, file by file, when the target
cannot be renamed (a mount point). Whatever a kill interrupts, each directory stays
recognisable, and the next command writing that target finishes the commit or puts the
earlier output back (:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import filecmp
import functools
import os
import shutil
import sys
from pathlib import Path

from rdbench.files import (
    InputError,
    open_locked,
    parse_temporary_name,
    remove_temporary_files,
    temporary_name,
)
from rdbench.outputs import (
    MARKER,
    claim_of,
    file_list,
    iter_foreign,
    read_marker,
    write_marker,
)

# A rename onto these fails with one of these when it is a mount point (or on another
# file system): the output is then committed into it, file by file.
_NOT_RENAMABLE = frozenset({errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES})


class ResultsKeptError(InputError):
    """The output is finished but could not be put in place: it is kept (the message says
    where) instead of being thrown away."""


def commit_directory(tmp: Path, target: Path) -> None:
    """Put the finished staged directory ``tmp`` in place as ``target``.

    A new target is a rename; an existing one (already checked replaceable) is swapped
    with ``tmp`` and then removed (:func:`_replace`); a target that cannot be renamed (a
    mount point: EBUSY, EXDEV, EPERM, EACCES) gets the files put into it instead
    (:func:`_commit_into`), and if even that fails ``tmp`` is kept (:class:`ResultsKeptError`).
    """
    try:
        if os.path.ismount(target):
            raise OSError(errno.EBUSY, "a mount point", str(target))
        if target.exists():
            _replace(tmp, target)
        else:
            os.rename(tmp, target)
    except OSError as e:
        if e.errno not in _NOT_RENAMABLE or not target.is_dir():
            raise
        _commit_into(tmp, target)
    _fsync_parent(target)
    with contextlib.suppress(OSError):  # only a name in the marker: never worth an error
        _forget_staging(target)


def _forget_staging(output: Path) -> None:
    """Drop ``staged_as`` from the marker of a committed output (the same seed then gives
    the same bytes; a kill before this only leaves a name that is no longer there)."""
    marker = read_marker(output)
    if marker is not None and marker.pop("staged_as", None) is not None:
        write_marker(output, marker["kind"], marker.get("files", ()))


def _fsync_parent(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(tmp: Path, target: Path) -> None:
    """Swap ``tmp`` in for the earlier output ``target``, then remove the earlier one.

    Whatever a kill interrupts, each directory is recognisable: the finished output is the
    staged directory whose marker names it, the earlier one is at ``.NAME.old-<token>``
    or (after an exchange) at the staged name its marker does not name.
    """
    lock = open_locked(target, blocking=True)  # no other commit of this target meanwhile
    try:
        old = tmp if _rename_exchange(tmp, target) else _rename_twice(tmp, target)
    finally:
        if lock is not None:
            os.close(lock)
    shutil.rmtree(old, ignore_errors=True)


def _rename_twice(tmp: Path, target: Path) -> Path:
    """``target`` aside as ``.NAME.old-<token>``, then ``tmp`` onto ``target``; returns
    where the old output went. A failure of the second rename puts the old one back."""
    old = target.with_name(temporary_name(target.name, "old"))
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    return old


@functools.lru_cache(maxsize=1)
def _renameat2():  # noqa: ANN202 (a ctypes function, or None)
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` atomically (Linux ``renameat2``): True when
    done, False where the system or file system has no such call."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _commit_into(tmp: Path, target: Path, resume: bool = False) -> None:
    """Put the files of the finished ``tmp`` into the existing directory ``target``.

    ``target``'s earlier content (an output of the same kind, checked) is removed, its
    marker last; then every file is hard-linked into it, or copied across file systems,
    the marker last, and ``tmp`` is removed. ``tmp`` stays whole until the end, so a kill
    leaves it for the next run to finish (with ``resume``: nothing is removed first), and
    when this fails (what was added is taken out again) it is kept and the error says where.
    """
    added: list[Path] = []
    try:
        if not resume:
            _clear(target)
        _link_tree(tmp, target, added)
    except OSError as e:
        for path in reversed(added):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        raise ResultsKeptError(f"cannot write the finished output into {target} "
                               f"({e.strerror or e}); it is kept in {tmp}: move its files "
                               "there yourself") from None
    shutil.rmtree(tmp, ignore_errors=True)


def _clear(directory: Path) -> None:
    for path in sorted(directory.iterdir(), key=lambda p: p.name == MARKER):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _link_tree(source: Path, target: Path, added: list[Path]) -> None:
    """Every file of ``source`` at the same place in ``target``, the marker last; what it
    creates is appended to ``added``."""
    for rel in file_list(source):
        path = target / rel.rstrip("/")
        for directory in [*reversed(path.relative_to(target).parents[:-1]),
                          *([Path(rel)] if rel.endswith("/") else [])]:
            if not (target / directory).is_dir():
                (target / directory).mkdir()
                added.append(target / directory)
        if not rel.endswith("/"):
            _link_file(source / rel, path)
            added.append(path)
    _link_file(source / MARKER, target / MARKER)
    added.append(target / MARKER)


def _link_file(source: Path, target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        target.unlink()  # a half copy of a commit a kill interrupted
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


# ---------------------------------------------------------------- what a kill left
def remove_leftovers(target: str | os.PathLike) -> None:
    """Finish or undo what killed commands left beside the output ``target``.

    Only rdbench's own staged and old directories (their signed names) whose lock can be
    taken are touched. A finished staged output (a kill between its marker and its
    commit, or a commit that failed) is committed when ``target`` is absent, replaceable
    or holds only its files (an interrupted commit into a mount point), else kept with a
    note; the rest (unfinished, old, superseded) is removed, except that a missing
    ``target`` (a kill between the two renames of a replacement) with nothing finished
    to put there gets the earlier output back. The temporary files of ``target`` go too.
    Problems are notes on stderr: this never stops the command.
    """
    target = Path(target)
    remove_temporary_files(target.parent, target.name)
    with contextlib.ExitStack() as locks:
        found = _dead_staging(target, locks)
        finished = sorted((p for p in found if p.name.endswith(".partial") and _finished(p)),
                          key=_marker_time)
        olds = sorted((p for p in found if p.name.startswith(f".{target.name}.old-")),
                      key=_marker_time)
        if finished:
            _finish(finished[-1], target)
        if olds and not target.exists():
            _restore(olds[-1], target)
        for path in found:
            if path.exists() and path not in finished[-1:]:
                shutil.rmtree(path, ignore_errors=True)


def _dead_staging(target: Path, locks: contextlib.ExitStack) -> list[Path]:
    """rdbench's staged and old directories of ``target`` whose process is dead, each
    locked (until ``locks`` closes) while it is dealt with."""
    found = []
    with contextlib.suppress(OSError), os.scandir(target.parent) as entries:
        for entry in entries:
            parsed = parse_temporary_name(entry.name)
            if parsed is None or parsed[0] != target.name or parsed[1] == "tmp" \
                    or not entry.is_dir(follow_symlinks=False):
                continue
            lock = open_locked(Path(entry.path))
            if lock is not None:
                locks.callback(os.close, lock)
                found.append(Path(entry.path))
    return sorted(found)


def _finished(staging: Path) -> bool:
    """A staged output whose work was done: its marker names it and every file it lists
    is there (an earlier output swapped out to a staged name has a marker naming another)."""
    marker = read_marker(staging)
    files = marker.get("files") if marker else None
    return marker is not None and marker.get("staged_as") == staging.name \
        and isinstance(files, list) and all(
            (staging / f).is_dir() if f.endswith("/") else (staging / f).is_file()
            for f in files)


def _marker_time(path: Path) -> float:
    try:
        return (path / MARKER).stat().st_mtime
    except OSError:
        return 0.0


def _finish(staging: Path, target: Path) -> None:
    """Commit the finished ``staging`` that a kill (or a failure) kept from ``target``."""
    kind = read_marker(staging)["kind"]
    try:
        replaceable = _why_not_replaceable(target, kind) is None
        if not replaceable and _why_not_into(staging, target) is not None:
            _note(f"the finished {kind} output of an earlier run is kept in {staging} "
                  f"({target} {_why_not_replaceable(target, kind)})")
            return
        if replaceable:
            commit_directory(staging, target)
        else:
            _commit_into(staging, target, resume=True)
    except (OSError, InputError) as e:
        _note(f"the finished {kind} output of an earlier run is kept in {staging} ({e})")
        return
    _note(f"put the finished {kind} output of an earlier, interrupted run in place: {target}")


def _why_not_replaceable(target: Path, kind: str) -> str | None:
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return None
    claim = claim_of(target) if target.is_dir() else None
    if claim is None or claim.kind != kind:
        return f"is not an earlier rdbench {kind} output"
    extra = next(iter_foreign(target, claim), None)
    return f"holds {extra}, which rdbench did not write" if extra else None


def _why_not_into(staging: Path, target: Path) -> str | None:
    """A commit into ``target`` is resumed only over what an interrupted one put there:
    files of the staged output, the same file (a hard link) or the same bytes (a copy)."""
    claim = claim_of(staging)
    if claim is None or not target.is_dir():
        return "is not a directory"
    extra = next(iter_foreign(target, claim), None) or next(
        (rel for rel in file_list(target)
         if not rel.endswith("/") and not _same_file(staging / rel, target / rel)), None)
    return f"holds {extra}, which is not part of that output" if extra else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _restore(old: Path, target: Path) -> None:
    """Put the earlier output ``old`` back at the missing ``target``."""
    try:
        os.rename(old, target)
    except OSError as e:
        _note(f"an earlier output of {target} is in {old} ({e.strerror or e})")
        return
    _note(f"put back {target}, which a killed command had moved aside")


def _note(text: str) -> None:
    print(f"rdbench: {text}", file=sys.stderr)
