"""``rdbench.staging`` and ``rdbench.commit``: a finished output is never lost at the
commit, and what a killed command left beside an output is finished, put back or removed
by the next one.

Kills are real: a child process stages an output and ends with ``os._exit`` at a chosen
step (no cleanup runs, its locks are freed by the OS), as ``kill -9`` would.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rdbench import commit
from rdbench.files import temporary_name
from rdbench.io import (
    MARKER,
    InputError,
    ResultsKeptError,
    atomic_write_text,
    check_output_dir,
    is_leftover,
    output_kind,
    remove_leftovers,
    staged_directory,
)


def _stage(target: Path, text: str, force: bool = False) -> Path:
    with staged_directory(target, force, kind="report") as tmp:
        atomic_write_text(tmp / "index.html", text)
        atomic_write_text(tmp / "figures" / "a.png", text)
    return target


def _content(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): p.read_text()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MARKER}


def _siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir())


# ---------------------------------------------------------------- a target that cannot be renamed
@pytest.fixture
def unrenamable(monkeypatch):
    """Make ``target`` behave as an (empty or filled) mount point: every rename of it (or
    onto it) fails with EBUSY, as the final rename did on a Docker volume."""
    def patch(target: Path) -> None:
        rename = os.rename

        def busy(src, dst, *args, **kwargs):
            if Path(dst) == target or Path(src) == target:
                raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
            return rename(src, dst, *args, **kwargs)

        def busy_exchange(a, b):
            raise OSError(errno.EBUSY, "Device or resource busy", str(b))

        monkeypatch.setattr(os, "rename", busy)
        monkeypatch.setattr(commit, "_rename_exchange", busy_exchange)
    return patch


@pytest.mark.parametrize("earlier", [False, True])
def test_an_unrenamable_target_gets_the_files_put_into_it(tmp_path, unrenamable, earlier):
    """Was: EBUSY after all the work, and the staged results deleted."""
    target = tmp_path / "volume"
    if earlier:
        _stage(target, "old")
        (target / "figures" / "stale.png").write_text("old")  # ...of that output, listed:
        from rdbench.io import record_output_files
        record_output_files(target, ["figures/stale.png"])
    else:
        target.mkdir()
    inode = target.stat().st_ino
    unrenamable(target)
    _stage(target, "new", force=earlier)
    assert target.stat().st_ino == inode  # the same directory: filled, not replaced
    assert _content(target) == {"index.html": "new", "figures/a.png": "new"}
    assert output_kind(target) == "report" and "staged_as" not in (target / MARKER).read_text()
    assert _siblings(target) == ["volume"]  # no staging left


def test_a_mount_point_is_filled_without_trying_to_rename_it(tmp_path, monkeypatch):
    target = tmp_path / "volume"
    target.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == target)
    monkeypatch.setattr(os, "rename", None)  # any rename would fail loudly
    monkeypatch.setattr(commit, "_rename_exchange", None)
    inode = target.stat().st_ino
    _stage(target, "new")
    assert target.stat().st_ino == inode and _content(target)["index.html"] == "new"


def test_when_even_filling_fails_the_finished_output_is_kept_and_named(tmp_path, unrenamable,
                                                                       monkeypatch, capsys):
    target = tmp_path / "volume"
    target.mkdir()
    unrenamable(target)

    def denied(source, dest):
        raise OSError(errno.EACCES, "Permission denied", str(dest))

    monkeypatch.setattr(commit, "_link_file", denied)
    with pytest.raises(ResultsKeptError, match=r"it is kept in .*\.volume\.[0-9a-f]{12}\.partial"):
        _stage(target, "new")
    kept = next(p for p in tmp_path.iterdir() if p.name.endswith(".partial"))
    assert _content(kept) == {"index.html": "new", "figures/a.png": "new"}
    assert list(target.iterdir()) == []  # nothing half-filled
    monkeypatch.undo()  # the volume is writable again: the next command puts it in place
    remove_leftovers(target)
    assert _content(target) == {"index.html": "new", "figures/a.png": "new"}
    assert _siblings(target) == ["volume"]
    assert "put the finished report output of an earlier" in capsys.readouterr().err


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"),
                                   KeyboardInterrupt()])
def test_an_error_at_the_commit_never_throws_the_finished_output_away(tmp_path, monkeypatch,
                                                                      error):
    target = _stage(tmp_path / "report", "old")

    def failing(a, b):
        raise error

    monkeypatch.setattr(commit, "_rename_exchange", failing)
    expected = ResultsKeptError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected, match="Input/output error; the finished output is kept in"
                       if isinstance(error, OSError) else None):
        _stage(target, "new", force=True)
    (kept,) = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert _content(kept)["index.html"] == "new" and _content(target)["index.html"] == "old"
    monkeypatch.undo()
    remove_leftovers(target)  # the next command puts it in place
    assert _content(target)["index.html"] == "new" and _siblings(target) == ["report"]


# ---------------------------------------------------------------- kills
_CHILD = """
import os, shutil, sys
from pathlib import Path
from rdbench import commit
from rdbench.io import atomic_write_text, staged_directory

target, step, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "exchange"
if not exchange:
    commit._rename_exchange = lambda a, b: False
rename, rmtree = os.rename, shutil.rmtree

def killed_rename(src, dst):
    if step == "first rename" or (step == "second rename" and Path(src).name.endswith(".partial")):
        os._exit(9)
    return rename(src, dst)

def killed_rmtree(path, *args, **kwargs):
    if step == "removal of the old" and path != target:
        os._exit(9)
    return rmtree(path, *args, **kwargs)

os.rename, shutil.rmtree = killed_rename, killed_rmtree
with staged_directory(target, force=True, kind="report") as tmp:
    atomic_write_text(tmp / "index.html", "new")
    atomic_write_text(tmp / "figures" / "a.png", "new")
    if step == "work":
        os._exit(9)
os._exit(0)
"""


def _killed(target: Path, step: str, how: str = "two renames") -> None:
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD), str(target), step,
                            "exchange" if how == "exchange" else "rename"],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == (0 if step == "none" else 9), child.stderr


@pytest.mark.parametrize("step, how, after", [
    ("work", "two renames", "old"),                    # unfinished: removed, old kept
    ("first rename", "two renames", "new"),            # finished: the commit is finished
    ("second rename", "two renames", "new"),           # the old aside, the new not in yet
    ("removal of the old", "two renames", "new"),
    ("removal of the old", "exchange", "new"),         # the old at the staged name
    ("none", "exchange", "new")])
def test_a_kill_at_any_step_leaves_the_output_to_the_next_run(tmp_path, capsys, step, how,
                                                              after):
    """Was: a kill between the two renames left neither output at the target."""
    target = _stage(tmp_path / "report", "old")
    _killed(target, step, how)
    if step == "second rename":
        assert not target.exists()  # what the user would find, until the next run
    check_output_dir(target, force=True, kind="report")  # what every writer does first
    assert _content(target) == {"index.html": after, "figures/a.png": after}
    assert _siblings(target) == ["report"]
    assert output_kind(target) == "report"


_KILLED_FILLING = """
import os, sys
from pathlib import Path
from rdbench import commit
from rdbench.io import atomic_write_text, staged_directory

target = Path(sys.argv[1])
os.path.ismount = lambda p: Path(p) == target  # a mount point: filled, file by file
link, linked = commit._link_file, []

def killed_link(source, dest):
    if linked:
        os._exit(9)  # killed after the first file
    linked.append(link(source, dest))

commit._link_file = killed_link
with staged_directory(target, force=True, kind="report") as tmp:
    for name in ("index.html", "figures/a.png", "summary.csv"):
        atomic_write_text(tmp / name, "new")
"""


def test_a_kill_while_filling_a_mount_point_is_finished_by_the_next_run(tmp_path):
    target = tmp_path / "volume"
    target.mkdir()
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_FILLING),
                            str(target)], capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    assert len(_content(target)) == 1  # what the user would find, until the next run
    check_output_dir(target, force=True, kind="report")
    assert _content(target) == {"index.html": "new", "figures/a.png": "new",
                                "summary.csv": "new"}
    assert _siblings(target) == ["volume"] and output_kind(target) == "report"


def test_a_kill_between_the_renames_with_nothing_finished_puts_the_old_output_back(tmp_path):
    target = _stage(tmp_path / "report", "old")
    old = tmp_path / temporary_name("report", "old")
    os.rename(target, old)  # what a kill right after the first rename of a commit leaves
    unfinished = tmp_path / temporary_name("report", "partial")
    unfinished.mkdir()
    (unfinished / "index.html").write_text("half")
    remove_leftovers(target)
    assert _content(target) == {"index.html": "old", "figures/a.png": "old"}
    assert _siblings(target) == ["report"]


def test_a_live_commands_staging_is_never_touched(tmp_path):
    target = _stage(tmp_path / "report", "old")
    with staged_directory(target, force=True, kind="report") as tmp:
        atomic_write_text(tmp / "index.html", "new")
        assert not is_leftover(tmp)
        remove_leftovers(target)  # another command starting meanwhile
        check_output_dir(target, force=True, kind="report")
        assert tmp.is_dir() and (tmp / "index.html").read_text() == "new"
    assert (target / "index.html").read_text() == "new"


def test_directories_that_only_look_like_rdbench_staging_are_the_users(tmp_path):
    """A user's `.report.cafebabe1234.partial` full of files: no signature, never removed."""
    target = _stage(tmp_path / "report", "old")
    for name in (".report.cafebabe1234.partial", ".report.old-cafebabe1234"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.md").write_text("mine")
        assert not is_leftover(tmp_path / name)
    _stage(target, "new", force=True)
    assert _siblings(target) == [".report.cafebabe1234.partial", ".report.old-cafebabe1234",
                                 "report"]
    assert (tmp_path / ".report.old-cafebabe1234" / "notes.md").read_text() == "mine"


@pytest.mark.parametrize("users", ["mine.txt", "index.html"])  # even named as its files
def test_a_finished_output_kept_from_a_users_directory_is_not_forced_in(tmp_path, capsys,
                                                                        users):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="kept in"), \
            staged_directory(target, force=True, kind="report") as tmp:
        atomic_write_text(tmp / "index.html", "new")
        target.mkdir()
        (target / users).write_text("mine")
    remove_leftovers(target)
    assert [p.name for p in target.iterdir()] == [users]
    assert (target / users).read_text() == "mine" and (tmp / "index.html").read_text() == "new"
    assert f"kept in {tmp}" in capsys.readouterr().err
    (target / users).unlink()
    remove_leftovers(target)
    assert _content(target) == {"index.html": "new"} and not tmp.exists()


# ---------------------------------------------------------------- temporary files of atomic writes
_KILLED_WRITE = """
import os, sys
from rdbench.io import atomic_write

def write(f):
    f.write(b"half")
    f.flush()
    os._exit(9)

atomic_write(sys.argv[1], write)
"""


def test_the_temporary_file_of_a_killed_write_goes_with_the_next_write(tmp_path):
    target = tmp_path / "result.json"
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITE), str(target)],
                           capture_output=True, timeout=60)
    assert child.returncode == 9
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert is_leftover(leftover)
    users = tmp_path / ".result.json.1234abcd5678.tmp"  # the user's: no signature
    users.write_text("mine")
    atomic_write_text(target, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [users.name, "result.json"]


def test_a_live_writes_temporary_file_is_left_alone(tmp_path):
    target = tmp_path / "result.json"
    seen = []

    def write(f):
        f.write(b"{}")
        (live,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert not is_leftover(live)
        atomic_write_text(target, "other")  # another writer of the same file meanwhile
        seen.append(live.exists())

    from rdbench.io import atomic_write
    atomic_write(target, write)
    assert seen == [True] and target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_committed_marker_lists_every_file_and_no_staged_directory(tmp_path):
    """...so the same seed gives the same bytes, and a later --force knows every file."""
    target = _stage(tmp_path / "a", "x")
    marker = json.loads((target / MARKER).read_text())
    assert marker == {"kind": "report", "entries": ["figures", "index.html"],
                      "files": ["figures/a.png", "index.html"]}
