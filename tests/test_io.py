"""``rdbench.io``: file modes of atomic writes, what ``--force`` may replace, bench --out files."""

import json
import os
import stat
from pathlib import Path

import pytest

from rdbench.io import (
    MARKER,
    InputError,
    atomic_write_text,
    bench_kind,
    check_bench_output,
    check_output_dir,
    output_kind,
    staged_directory,
)


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _staged(target: Path, kind: str, force: bool = False, text: str = "new") -> Path:
    with staged_directory(target, force, kind=kind) as tmp:
        atomic_write_text(tmp / "sub" / "file.txt", text)
    return target


# ---------------------------------------------------------------- modes


def test_atomic_writes_and_staged_directories_get_umask_modes(tmp_path, umask_022):
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == 0o644
    out = _staged(tmp_path / "out", "report")
    assert [_mode(p) for p in (out, out / "sub", out / "sub" / "file.txt", out / MARKER)] == \
        [0o755, 0o755, 0o644, 0o644]
    os.umask(0o077)  # a stricter umask is honoured too
    assert _mode(atomic_write_text(tmp_path / "b.txt", "x")) == 0o600


# ---------------------------------------------------------------- what --force replaces


def test_force_replaces_an_output_of_the_same_kind_only(tmp_path):
    out = _staged(tmp_path / "out", "report", text="old")
    assert output_kind(out) == "report"
    with pytest.raises(InputError, match="use --force"):
        _staged(out, "report")
    with pytest.raises(InputError, match="an rdbench report directory"):
        _staged(out, "dataset", force=True)
    assert (out / "sub" / "file.txt").read_text() == "old"
    _staged(out, "report", force=True)
    assert (out / "sub" / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging leftovers


def test_force_never_replaces_a_directory_rdbench_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for kind in ("report", "dataset", "kp", "output"):
        with pytest.raises(InputError, match="not written by rdbench"):
            _staged(mine, kind, force=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (mine / MARKER).write_text("not json")  # a damaged marker is not a claim
    assert output_kind(mine) is None
    assert _staged(tmp_path / "empty", "kp", force=True).is_dir()  # an empty dir is fine


def test_outputs_from_before_the_marker_are_known_by_their_files(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    for name in ("index.html", "report.md", "summary.csv"):
        (report / name).write_text("x")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"generator": "rdbench tetrominoes"}))
    assert (output_kind(report), output_kind(dataset)) == ("report", "dataset")
    assert check_output_dir(report, force=True, kind="report") == report.resolve()
    (dataset / "manifest.json").write_text(json.dumps({"generator": "something else"}))
    assert output_kind(dataset) is None


def test_the_input_directory_and_its_ancestors_are_refused(tmp_path):
    runs = tmp_path / "runs"
    (runs / "grids").mkdir(parents=True)
    for out in (runs, tmp_path):
        with pytest.raises(InputError, match="input directory"):
            check_output_dir(out, force=True, kind="report", inputs=[runs])
    assert check_output_dir(runs / "report", False, kind="report", inputs=[runs])


def test_without_a_kind_force_allows_writing_into_any_directory(tmp_path):
    """``rdbench train --force`` writes into a foreign directory and deletes nothing."""
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        check_output_dir(tmp_path, force=False)
    assert check_output_dir(tmp_path, force=True) == tmp_path.resolve()
    report = tmp_path / "report"
    with staged_directory(report, kind="report") as tmp:
        (tmp / "index.html").write_text("x")
    with pytest.raises(InputError, match="is an rdbench report directory"):
        check_output_dir(report, force=True)  # another command's output: never written into


def test_a_user_directory_appearing_during_the_work_is_not_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="not written by rdbench"), \
            staged_directory(target, force=True, kind="report") as tmp:
        (tmp / "x").write_text("x")
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_an_uncreatable_output_is_an_input_error_even_when_access_says_yes(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)  # as for root
    with pytest.raises(InputError, match="cannot create output directory /proc/nope/x"), \
            staged_directory("/proc/nope/x", kind="dataset"):
        pass


# ---------------------------------------------------------------- bench --out files


def test_bench_output_replaces_only_an_earlier_result_of_the_same_bench(tmp_path):
    train, legacy_eval, user = tmp_path / "t.json", tmp_path / "e.json", tmp_path / "u.json"
    train.write_text(json.dumps({"bench": "train", "rows": []}))
    legacy_eval.write_text(json.dumps({"rate_decomposition": [], "throughput": []}))
    user.write_text('{"mine": 1}')
    assert [bench_kind(p) for p in (train, legacy_eval, user)] == ["train", "eval", None]
    assert check_bench_output(train, False, "train") == train
    assert check_bench_output(legacy_eval, False, "eval") == legacy_eval
    for path, bench in ((user, "train"), (train, "eval")):
        with pytest.raises(InputError, match="use --force"):
            check_bench_output(path, False, bench)
    assert check_bench_output(user, True, "data") == user
    assert user.read_text() == '{"mine": 1}'  # checking writes nothing


def test_bench_output_paths_that_cannot_be_a_file(tmp_path):
    assert check_bench_output(None, False, "eval") is None
    with pytest.raises(InputError, match="is a directory"):
        check_bench_output(tmp_path, True, "eval")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="through a file"):
        check_bench_output(tmp_path / "file" / "x.json", True, "eval")
    new = tmp_path / "a" / "b" / "x.json"
    assert check_bench_output(new, False, "eval") == new and new.parent.is_dir()


def test_force_refuses_an_output_that_now_holds_files_rdbench_did_not_write(tmp_path):
    """The marker lists what rdbench wrote; anything added since is the user's."""
    out = tmp_path / "out"
    _staged(out, "report")
    assert json.loads((out / MARKER).read_text())["entries"] == ["sub"]
    (out / "runs").mkdir()
    (out / "runs" / "precious.txt").write_text("mine")
    with pytest.raises(InputError, match="holds 'runs', which rdbench did not write"):
        _staged(out, "report", force=True)
    assert (out / "runs" / "precious.txt").read_text() == "mine"
    dataset = tmp_path / "dataset"  # written before the marker: the manifest lists its files
    (dataset / "splits").mkdir(parents=True)
    (dataset / "manifest.json").write_text(json.dumps(
        {"generator": "rdbench tetrominoes", "files": {"images.npy": "0", "splits/a.npz": "0"}}))
    (dataset / "notes.md").write_text("mine")
    with pytest.raises(InputError, match="holds 'notes.md'"):
        check_output_dir(dataset, force=True, kind="dataset")
    (dataset / "notes.md").unlink()
    assert check_output_dir(dataset, force=True, kind="dataset") == dataset.resolve()


@pytest.mark.parametrize("argv", [["train"], ["evaluate", "runs", "--iwae-samples", "abc"],
                                  ["nosuch"]])
def test_command_line_mistakes_are_one_line_and_exit_2(argv, capsys):
    from rdbench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err, err
