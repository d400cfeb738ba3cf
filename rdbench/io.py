"""File helpers shared by every stage: atomic writes, output checks and user-facing errors.

Every file rdbench writes goes through one of the ``atomic_*`` functions: the content is
written to a temporary file in the same directory, flushed to disk, then renamed over the
target, so a reader (or a killed process) never sees half a file. Directories that are
built in several steps (a dataset, a report) are built in a temporary sibling and renamed
with :func:`commit_directory`. Temporary files and directories are created with the
ordinary modes (0o666 / 0o777 less the umask), so the results are as readable as any file
the user creates.

``--force`` never replaces what rdbench did not write: every staged directory carries a
marker file naming its kind (:data:`MARKER`), and only a directory of the same kind (or an
empty one) is replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")

MARKER = ".rdbench-output"  # {"kind": ...} inside every directory staged_directory writes


class InputError(Exception):
    """Bad input from the user: reported as one line on stderr with exit status 2."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create_unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], T],
                   ) -> tuple[Path, T]:
    """``create(path)`` for a fresh random name in ``parent`` (retried if the name is taken).

    Used instead of ``tempfile.mkstemp``/``mkdtemp``, which create owner-only entries: here
    the mode is the caller's (0o666 / 0o777) and the kernel applies the umask.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {parent}")


def _open_new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                   0o666)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_unique(path.parent, f".{path.name}.", ".tmp", _open_new_file)
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


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to hold an exclusive ``flock`` on ``path`` (created if absent) for the with-block,
    without waiting: yields True when held, False when another process holds it. The OS
    frees it when its holder dies. Where there is no ``flock`` (not POSIX) it yields True."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield True
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


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


# ---------------------------------------------------------------- output directories
def _is_dataset(path: Path) -> bool:
    manifest = json_or_none(path / "manifest.json")
    return isinstance(manifest, dict) and manifest.get("generator") == "rdbench tetrominoes"


def _has_all(*names: str) -> Callable[[Path], bool]:
    return lambda path: all((path / name).is_file() for name in names)


def _has_any(*checks: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda path: any(check(path) for check in checks)


# Outputs written before the marker existed, recognised by their characteristic files.
_SIGNATURES: dict[str, Callable[[Path], bool]] = {
    "dataset": _is_dataset,
    "report": _has_all("index.html", "report.md", "summary.csv"),
    "kp-objectives": _has_all("objectives.csv", "objectives_summary.csv"),
    "kp-jacobian": _has_all("jacobian.csv", "jacobian_summary.csv"),
    "kp-uniqueness": _has_any(_has_all("trials.csv", "summary.md", "config.json"),
                              _has_all("orientations.csv", "orientations.md", "config.json")),
}


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of rdbench output directory ``path`` is (its marker, else its files), or None."""
    path = Path(path)
    if (path / MARKER).exists():
        marker = json_or_none(path / MARKER)
        return marker.get("kind") if isinstance(marker, dict) else None
    return next((kind for kind, matches in _SIGNATURES.items() if matches(path)), None)


def foreign_entries(path: Path) -> list[str]:
    """Top-level entries of an rdbench output directory that its writer did not put there
    (by the marker's list; for a dataset written before it, by the manifest's files)."""
    marker = json_or_none(path / MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("entries"), list):
        ours = set(marker["entries"])
    elif _is_dataset(path):
        manifest = json_or_none(path / "manifest.json") or {}
        ours = {Path(f).parts[0] for f in manifest.get("files", {})}
        ours |= {"manifest.json", "preview.png"}
    else:  # other outputs from before the marker: recognised by their files, not listed
        return []
    return sorted(p.name for p in path.iterdir() if p.name not in ours | {MARKER})


def _check_not_input(path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if path == source or path in source.parents:
            relation = "is" if path == source else "contains"
            raise InputError(f"output directory {path} {relation} the input directory "
                             f"{source}; choose another --out")


def check_output_dir(path: str | os.PathLike, force: bool, kind: str | None = None,
                     inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Validate an output directory up front, before any work starts; returns it resolved.

    A path that exists as a file, whose nearest existing parent is not a writable directory,
    or that is (or contains) one of ``inputs`` is refused always. A non-empty directory is
    refused without ``force``. With ``kind`` (the directory will be *replaced*) ``force``
    only allows an rdbench output of that same kind, so a user's directory, a runs
    directory or another command's output is never deleted. Without ``kind`` (the caller
    writes *into* the directory and deletes nothing, as ``rdbench train``) ``force``
    allows any non-empty directory but another command's output (a dataset, a report...).
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"output path exists and is not a directory: {path}")
    _check_not_input(path, inputs)
    if path.is_dir() and any(path.iterdir()):
        found = output_kind(path)
        if kind is None and found is not None:
            raise InputError(f"output directory {path} is an rdbench {found} directory; "
                             "choose another --out")
        if kind is not None and found != kind:
            what = f"an rdbench {found} directory" if found else "not written by rdbench"
            raise InputError(f"output directory is not empty: {path} ({what}; --force replaces "
                             f"only an earlier rdbench {kind} directory: choose another --out)")
        extra = foreign_entries(path) if kind is not None else []
        if extra:
            raise InputError(f"output directory {path} holds {extra[0]!r}, which rdbench did "
                             "not write there; --force replaces only what rdbench wrote: "
                             "move it or choose another --out")
        if not force:
            verb = "write into" if kind is None else "replace"
            raise InputError(f"output directory is not empty: {path} (use --force to {verb} it)")
    _check_writable_ancestor(path if path.exists() else path.parent)
    return path


def _check_writable_ancestor(path: Path) -> None:
    """The nearest existing ancestor of ``path`` (or itself) must be a writable directory."""
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise InputError(f"output path goes through a file, not a directory: {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output directory is not writable: {path}")


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, force: bool = False,
                     kind: str = "output") -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it to ``target`` on success.

    On error the temporary directory is removed and ``target`` is left as it was. With
    ``force`` an existing ``target`` of the same ``kind`` (see :func:`check_output_dir`) is
    replaced, only after the new one is complete; the new one gets a :data:`MARKER` file
    naming ``kind``, which is what lets a later ``--force`` replace it.
    """
    target = check_output_dir(target, force, kind)
    tmp = _make_staging_dir(target)
    try:
        yield tmp
        entries = sorted(p.name for p in tmp.iterdir())
        atomic_write_json(tmp / MARKER, {"kind": kind, "entries": entries})
        check_output_dir(target, force, kind)  # again: the work may have taken hours
        commit_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_staging_dir(target: Path) -> Path:
    """A new empty sibling of ``target``; an OS error here is the user's path, not a bug."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = _create_unique(target.parent, f".{target.name}.", ".partial",
                                lambda p: os.mkdir(p, 0o777))
    except OSError as e:
        raise InputError(f"cannot create output directory {target}: "
                         f"{e.strerror or e}") from None
    return tmp


def commit_directory(tmp: Path, target: Path) -> None:
    """Rename a finished temporary directory onto ``target`` (replacing an old one last)."""
    old = None
    if target.exists():  # a fresh name: a leftover of a killed commit must not collide
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    ``scripts/gpu_checks.sh`` does, just work) or anything else with ``force``; never a
    directory. Missing parent directories are created here: trying is the only reliable
    test that they can be.
    """
    if path is None:
        return None
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise InputError(f"--out is a directory: {path} (give a file name, e.g. {bench}.json)")
    if path.exists() and not force and bench_kind(path) != bench:
        raise InputError(f"--out exists and is not an earlier `rdbench bench {bench}` "
                         f"result: {path} (use --force to replace it)")
    _check_writable_ancestor(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the directory of --out {path}: "
                         f"{e.strerror or e}") from None
    return path


def report_bench_result(out: Path | None, result: dict, markdown: str) -> None:
    """Print a bench's Markdown table; write its JSON to ``out`` (checked up front by
    :func:`check_bench_output`), if given, and say so."""
    print(markdown)
    if out is not None:
        atomic_write_json(out, result)
        print(f"wrote {out}")
