"""``rdbench.io``: file modes of atomic writes, what ``--force`` may replace, bench --out files."""

import json
import os
import stat
from pathlib import Path

import pytest

from rdbench.io import (
    FIGURE_METADATA,
    MARKER,
    InputError,
    atomic_write_text,
    bench_kind,
    check_bench_output,
    check_figure_output,
    check_output_dir,
    enclosing_output,
    foreign_paths,
    is_rdbench_figure,
    output_kind,
    record_output_files,
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
    """...and the finished output is kept, not thrown away (was: removed with the staging)."""
    target = tmp_path / "out"
    with pytest.raises(InputError, match="not written by rdbench.*the finished output is kept"), \
            staged_directory(target, force=True, kind="report") as tmp:
        (tmp / "x").write_text("x")
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert (tmp / "x").read_text() == "x" and output_kind(tmp) == "report"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_an_uncreatable_output_is_an_input_error_even_when_access_says_yes(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)  # as for root
    with pytest.raises(InputError, match="cannot create output directory /proc/nope/x"), \
            staged_directory("/proc/nope/x", kind="dataset"):
        pass


# ---------------------------------------------------------------- bench --out files


def test_bench_output_replaces_only_an_earlier_result_of_the_same_bench(tmp_path):
    """--force replaces another bench's result, never a user's file (was: any file)."""
    train, legacy_eval, user = tmp_path / "t.json", tmp_path / "e.json", tmp_path / "u.json"
    train.write_text(json.dumps({"bench": "train", "rows": []}))
    legacy_eval.write_text(json.dumps({"rate_decomposition": [], "throughput": []}))
    user.write_text('{"mine": 1}')
    assert [bench_kind(p) for p in (train, legacy_eval, user)] == ["train", "eval", None]
    assert check_bench_output(train, False, "train") == train
    assert check_bench_output(legacy_eval, False, "eval") == legacy_eval
    with pytest.raises(InputError, match="use --force"):
        check_bench_output(train, False, "eval")
    assert check_bench_output(train, True, "eval") == train
    for force in (False, True):
        with pytest.raises(InputError, match="not an `rdbench bench` result.*replaces only"):
            check_bench_output(user, force, "data")
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


# ---------------------------------------------------------------- every depth (issue #13)
def _report(target: Path, force: bool = False) -> Path:
    with staged_directory(target, force, kind="report") as tmp:
        for name in ("index.html", "report.md", "summary.csv", "figures/rd.png"):
            atomic_write_text(tmp / name, "rdbench")
    return target


def _dataset(target: Path) -> Path:
    """A tiny dataset as rdbench writes one: files listed by the manifest, a marker."""
    with staged_directory(target, kind="dataset") as tmp:
        for name in ("images.npy", "splits/random.npz", "preview.png"):
            atomic_write_text(tmp / name, "rdbench")
        atomic_write_text(tmp / "manifest.json", json.dumps({
            "generator": "rdbench tetrominoes", "format_version": 1,
            "files": {"images.npy": "0", "splits/random.npz": "0", "preview.png": "0"}}))
    return target


def test_a_directory_holding_a_reports_file_names_is_not_taken_for_one(tmp_path):
    """The issue's `site/`: index.html report.md summary.csv beside thesis.tex and photos/
    (was: recognised as an old report, and thesis.tex and photos/ deleted by --force)."""
    site = tmp_path / "site"
    (site / "photos").mkdir(parents=True)
    for name in ("index.html", "report.md", "summary.csv", "thesis.tex", "photos/cat.jpg"):
        (site / name).write_text("x")
    assert output_kind(site) is None
    with pytest.raises(InputError, match="not written by rdbench"):
        _report(site, force=True)
    (site / "thesis.tex").unlink()
    (site / "photos" / "cat.jpg").unlink()
    (site / "photos").rmdir()
    (site / "figures").mkdir()  # a report from before the marker: only its own files
    (site / "figures" / "rd.pdf").write_text("x")
    assert output_kind(site) == "report"
    (site / "figures" / "notes.md").write_text("x")
    assert output_kind(site) is None


@pytest.mark.parametrize("kind, entry, first", [
    ("report", "figures/my_notes.md", "figures/my_notes.md"),
    ("report", "figures/notes/a.txt", "figures/notes"),  # a foreign directory, not descended
    ("dataset", "splits/my_split.npz", "splits/my_split.npz"),
    ("dataset", "splits/notes/todo.md", "splits/notes"),
    ("dataset", "notes.md", "notes.md")])
def test_force_refuses_a_users_file_at_any_depth(tmp_path, kind, entry, first):
    """Was: only top-level entries were checked, and these were deleted by --force."""
    out = (_report if kind == "report" else _dataset)(tmp_path / "out")
    (out / entry).parent.mkdir(parents=True, exist_ok=True)
    (out / entry).write_text("mine")
    assert foreign_paths(out) == [first]
    with pytest.raises(InputError, match=f"holds '{first}', which rdbench did not write"):
        check_output_dir(out, force=True, kind=kind)
    assert (out / entry).read_text() == "mine"


def test_a_symlink_in_an_output_is_never_rdbenchs(tmp_path):
    out = _report(tmp_path / "out")
    (tmp_path / "secret").write_text("mine")
    (out / "figures" / "rd.png").unlink()
    (out / "figures" / "rd.png").symlink_to(tmp_path / "secret")  # even under a listed name
    assert foreign_paths(out) == ["figures/rd.png"]
    with pytest.raises(InputError, match="holds 'figures/rd.png'"):
        _report(out, force=True)
    assert (tmp_path / "secret").read_text() == "mine"


def test_files_a_command_adds_to_an_output_are_recorded_for_later(tmp_path):
    """`rdbench data split` adds splits/NAME.npz: recorded, a later --force replaces it."""
    dataset = _dataset(tmp_path / "ds")
    record_output_files(dataset, ["splits/mine.npz"])
    (dataset / "splits" / "mine.npz").write_text("rdbench")
    assert foreign_paths(dataset) == []
    assert check_output_dir(dataset, force=True, kind="dataset") == dataset.resolve()
    assert "splits/mine.npz" in json.loads((dataset / MARKER).read_text())["files"]
    for bad in ("/etc/passwd", "../x", MARKER):
        with pytest.raises(ValueError):
            record_output_files(dataset, [bad])
    with pytest.raises(InputError, match="not an rdbench output"):
        record_output_files(tmp_path, ["x"])


def test_an_old_dataset_lists_its_files_in_its_manifest(tmp_path):
    """A dataset from before the marker: the manifest's files and added_files are its own."""
    ds = tmp_path / "ds"
    (ds / "splits").mkdir(parents=True)
    for name in ("images.npy", "splits/random.npz", "splits/mine.npz", "preview.png"):
        (ds / name).write_text("x")
    (ds / "manifest.json").write_text(json.dumps({
        "generator": "rdbench import mnist", "files": {"images.npy": "0", "splits/random.npz": "0"},
        "added_files": {"splits/mine.npz": "0"}}))
    assert output_kind(ds) == "dataset" and foreign_paths(ds) == []
    (ds / "splits" / "other.npz").write_text("x")
    assert foreign_paths(ds) == ["splits/other.npz"]


# ---------------------------------------------------------------- never inside another output
@pytest.mark.parametrize("inside", ["splits/x", "splits", "a/b/c"])
def test_no_output_is_written_inside_a_dataset_even_with_force(tmp_path, inside):
    """Was: a report --out ds/splits/x, or runs trained into ds/splits/myruns, accepted."""
    dataset = _dataset(tmp_path / "ds")
    for kind in ("report", None):  # replaced as a whole, or written into (train, demo)
        for force in (False, True):
            with pytest.raises(InputError, match="would be inside the rdbench dataset"):
                check_output_dir(dataset / inside, force=force, kind=kind)
    assert enclosing_output(dataset / inside) == (dataset.resolve(), "dataset")
    with pytest.raises(InputError, match="inside the rdbench dataset"):
        check_bench_output(dataset / "splits" / "bench.json", True, "eval")
    assert not (dataset / "a").exists()


def test_an_output_inside_another_output_needs_force(tmp_path):
    report = _report(tmp_path / "RUNS" / "report")
    with pytest.raises(InputError, match="inside the rdbench report directory .*--force"):
        check_output_dir(report / "figures" / "x", force=False, kind="kp-objectives")
    assert check_output_dir(report / "figures" / "x", force=True, kind="kp-objectives")
    assert enclosing_output(tmp_path / "RUNS" / "kp" / "objectives") is None  # runs: not one


# ---------------------------------------------------------------- figures
def _figure(path: Path, metadata: dict | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    fig.savefig(path, metadata=metadata)
    plt.close(fig)
    return path


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_force_replaces_only_a_figure_rdbench_wrote(tmp_path, suffix):
    ours = _figure(tmp_path / f"ours{suffix}", FIGURE_METADATA)
    users = _figure(tmp_path / f"users{suffix}", None)  # the same kind of file, not ours
    assert [is_rdbench_figure(p) for p in (ours, users)] == [True, False]
    assert check_figure_output(ours, True) == ours
    with pytest.raises(InputError, match="use --force"):
        check_figure_output(ours, False)
    with pytest.raises(InputError, match="not a figure rdbench wrote"):
        check_figure_output(users, True)
    (tmp_path / "text.png").write_text("not an image")
    assert not is_rdbench_figure(tmp_path / "text.png")
    assert check_figure_output(tmp_path / "new" / f"x{suffix}", False).parent.is_dir()


def test_the_figure_savers_mark_their_figures(tmp_path, tiny_dataset):
    from analysis.plot_style import figure, save
    from tetrominoes.figures import plot_samples

    fig, _ = figure()
    paths = save(fig, tmp_path / "report_figure")
    paths.append(plot_samples(tiny_dataset, tmp_path / "samples.png", rows=1, cols=2))
    assert [is_rdbench_figure(p) for p in paths] == [True] * 3
