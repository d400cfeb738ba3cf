"""Output directories written as a whole: checked up front, built in a staged sibling,
and committed (:mod:`rdbench.commit`) only once complete.

A directory is built in ``.NAME.<token>.partial`` beside its target (a signed name, see
:mod:`rdbench.files`), locked (``flock``) by its process while it lives. Once the work is
done it gets its :data:`~rdbench.outputs.MARKER`, listing every file and the staged
directory's own name, and from then on it is never thrown away: an error at the commit
keeps it and says where, a kill leaves it for the next command to put in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from rdbench.commit import ResultsKeptError, commit_directory, remove_leftovers
from rdbench.files import InputError, create_temporary, open_locked
from rdbench.outputs import claim_of, enclosing_output, file_list, iter_foreign, write_marker


# ---------------------------------------------------------------- checks up front
def _check_not_input(path: Path, inputs: Iterable[str | os.PathLike]) -> None:
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if path == source or path in source.parents:
            relation = "is" if path == source else "contains"
            raise InputError(f"output directory {path} {relation} the input directory "
                             f"{source}; choose another --out")


def check_not_inside_output(path: Path, force: bool) -> None:
    """Refuse ``path`` inside a dataset (which must stay as its manifest says) always, and
    inside another rdbench output (a report, a kp analysis) without ``force``."""
    found = enclosing_output(path)
    if found is None:
        return
    where, kind = found
    if kind == "dataset":
        raise InputError(f"output {path} would be inside the rdbench dataset {where}, which "
                         "must stay as generated (its manifest lists every file); choose "
                         "another --out")
    if not force:
        raise InputError(f"output {path} would be inside the rdbench {kind} directory "
                         f"{where}; choose another --out (or use --force to write into it)")


def check_output_dir(path: str | os.PathLike, force: bool, kind: str | None = None,
                     inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Validate an output directory up front, before any work starts; returns it resolved.

    A path that exists as a file, whose nearest existing parent is not a writable directory,
    that is (or contains) one of ``inputs``, or that lies inside another rdbench output
    (see :func:`check_not_inside_output`) is refused. A non-empty directory is refused
    without ``force``. With ``kind`` (the directory will be *replaced*) ``force`` only
    allows an rdbench output of that same kind holding nothing, at any depth, that rdbench
    did not write there; what a killed earlier run left beside it is finished or removed
    first (:func:`remove_leftovers`). Without ``kind`` (the caller writes *into* the
    directory and deletes nothing, as ``rdbench train``) ``force`` allows any non-empty
    directory but another command's output (a dataset, a report...).
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"output path exists and is not a directory: {path}")
    _check_not_input(path, inputs)
    check_not_inside_output(path, force)
    if kind is not None:
        remove_leftovers(path)
    if path.is_dir() and any(path.iterdir()):
        _check_replaceable(path, force, kind)
    check_writable_ancestor(path if path.exists() else path.parent)
    return path


def _check_replaceable(path: Path, force: bool, kind: str | None) -> None:
    claim = claim_of(path)
    found = claim.kind if claim else None
    if kind is None and found is not None:
        raise InputError(f"output directory {path} is an rdbench {found} directory; "
                         "choose another --out")
    if kind is not None and found != kind:
        what = f"an rdbench {found} directory" if found else "not written by rdbench"
        raise InputError(f"output directory is not empty: {path} ({what}; --force replaces "
                         f"only an earlier rdbench {kind} directory: choose another --out)")
    extra = next(iter_foreign(path, claim), None) if claim and kind is not None else None
    if extra:
        raise InputError(f"output directory {path} holds {extra!r}, which rdbench did not "
                         "write there; --force replaces only what rdbench wrote: move it "
                         "or choose another --out")
    if not force:
        verb = "write into" if kind is None else "replace"
        raise InputError(f"output directory is not empty: {path} (use --force to {verb} it)")


def check_writable_ancestor(path: Path) -> None:
    """The nearest existing ancestor of ``path`` (or itself) must be a writable directory."""
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise InputError(f"output path goes through a file, not a directory: {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output directory is not writable: {path}")


# ---------------------------------------------------------------- staging
@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, force: bool = False,
                     kind: str = "output") -> Iterator[Path]:
    """Build a directory in a staged sibling and commit it to ``target`` on success.

    On an error during the work the staged directory is removed and ``target`` is left as
    it was. With ``force`` an existing ``target`` of the same ``kind`` (see
    :func:`check_output_dir`) is replaced, only after the new one is complete; the new one
    gets a :data:`MARKER` naming ``kind`` and listing every file, which is what lets a
    later ``--force`` replace it. A finished output that cannot be put in place (the
    target changed meanwhile, or cannot be written) is kept: :class:`ResultsKeptError`
    says where.
    """
    target = check_output_dir(target, force, kind)
    tmp, lock = _make_staging_dir(target)
    finished = False
    try:
        yield tmp
        write_marker(tmp, kind, file_list(tmp), staged_as=tmp.name)
        finished = True  # from here on, whatever happens, the work is kept
        _commit_checked(tmp, target, force, kind)
    except BaseException as e:
        if not finished:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                _name_the_target(e, tmp, target)
                e.add_note(f"the partial output was removed; kept: {target} as it was"
                           if target.exists() else
                           f"the partial output was removed ({target} was not created)")
        raise
    finally:
        os.close(lock)


def _commit_checked(tmp: Path, target: Path, force: bool, kind: str) -> None:
    """Check ``target`` again (the work may have taken hours) and commit ``tmp`` to it; a
    refusal or an error keeps ``tmp`` and says where (a kill is finished by the next run)."""
    try:
        check_output_dir(target, force, kind)
        commit_directory(tmp, target)
    except ResultsKeptError:
        raise
    except (InputError, OSError) as e:
        why = e.strerror + (f" ({e.filename})" if e.filename else "") \
            if isinstance(e, OSError) and e.strerror else e
        raise ResultsKeptError(f"{why}; the finished output is kept in {tmp}") from None


def _name_the_target(e: OSError, tmp: Path, target: Path) -> None:
    """A file of the (removed) staged directory named in an error is named as the user
    knows it: at its place in ``target``."""
    with contextlib.suppress(TypeError, ValueError):
        e.filename = str(target / Path(e.filename).relative_to(tmp))


def _make_staging_dir(target: Path) -> tuple[Path, int]:
    """A new staged sibling of ``target`` and the fd that holds its lock; an OS error here
    is the user's path, not a bug."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, _ = create_temporary(target.parent, target.name, "partial",
                                  lambda p: os.mkdir(p, 0o777))
        lock = open_locked(tmp, blocking=True)
        if lock is None:
            raise OSError(f"cannot open {tmp}")
    except OSError as e:
        raise InputError(f"cannot create output directory {target}: "
                         f"{e.strerror or e}") from None
    return tmp, lock
