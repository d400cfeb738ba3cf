"""``rdbench demo``: its input checks and what ``--force`` removes (the pipeline is not run)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from analysis import demo
from rdbench.cli import main
from rdbench.files import temporary_name
from rdbench.io import MARKER, InputError


def _earlier_demo(out: Path) -> Path:
    """The entries an earlier demo leaves in ``out``: runs of the demo grid, report, grid."""
    (out / "runs" / "grids").mkdir(parents=True)
    (out / "runs" / "grids" / "demo.json").write_text("{}")
    (out / "runs" / "run1").mkdir()
    (out / "runs" / "run1" / "config.json").write_text(json.dumps({"run_id": "run1"}))
    (out / "runs" / "neighbours").mkdir()
    (out / "report").mkdir()
    (out / "report" / MARKER).write_text(json.dumps({"kind": "report"}))
    demo._grid_file(out, out / "data")
    (out / "notes.txt").write_text("the user's, kept")
    return out


def test_bad_device_fails_before_the_dataset_is_generated(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "new"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "invalid device 'tpu'" in err and err.count("\n") == 1
    assert not (tmp_path / "new").exists()


def test_force_removes_only_what_an_earlier_demo_wrote(tmp_path):
    out = _earlier_demo(tmp_path)
    assert (out / "demo.toml").read_text().startswith(demo.GRID_HEADER)
    demo.check_previous_demo(out)
    demo._clear_previous_demo(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_grid_file_from_before_the_header_is_still_the_demos(tmp_path):
    (tmp_path / "demo.toml").write_text(demo.demo_grid_text(tmp_path / "data"))
    demo.check_previous_demo(tmp_path)


@pytest.mark.parametrize("earlier, entry, why", [
    (False, "runs/results.csv", "runs (not an rdbench runs directory)"),
    (True, "runs/grids/paper.json", "runs (holds runs of other grids than the demo's)"),
    (True, "runs/thesis.tex", "runs (holds thesis.tex, which is not a run)"),
    (True, "runs/.git/config", "runs (holds .git, which is not a run)"),
    (True, "runs/thesis/config.json", "runs (holds thesis, which is not a run)"),
    (True, "runs/report/notes.md", "runs (holds report, which is not a run)"),
    (False, "report/notes.txt", "report (not an rdbench report)"),
    (False, "data/notes.txt", "data (not an rdbench dataset)"),
    (False, "demo.toml", "demo.toml (not the demo's grid file)"),
    # every depth (issue #13; was: only the top-level entries of runs/ were looked at)
    (True, "runs/run1/notes.md", "runs (holds run1/notes.md, which rdbench did not write"),
    (True, "runs/run1/tb/mine/a.txt", "runs (holds run1/tb/mine/a.txt, which rdbench did"),
    (True, "runs/run1/.config.json.1234abcd5678.tmp", "runs (holds run1/.config.json.1234"),
    (True, "runs/neighbours/notes.txt", "runs (holds neighbours/notes.txt, which rdbench"),
    (True, "runs/.report.cafebabe1234.partial/a.md",  # named like rdbench's, not rdbench's
     "runs (holds .report.cafebabe1234.partial, which is not a run)"),
    (True, "report/figures/my_notes.md",
     "report (holds figures/my_notes.md, which rdbench did not write)")])
def test_force_refuses_entries_the_demo_did_not_write(tmp_path, capsys, earlier, entry, why):
    out = _earlier_demo(tmp_path) if earlier else tmp_path
    out.joinpath(entry).parent.mkdir(parents=True, exist_ok=True)
    out.joinpath(entry).write_text("mine")
    with pytest.raises(InputError, match=re.escape(why)):
        demo.check_previous_demo(out)
    assert main(["demo", "--out", str(out), "--force", "--device", "cpu"]) == 2
    assert "not an earlier demo's directory" in capsys.readouterr().err
    assert out.joinpath(entry).read_text() == "mine"


def test_force_refuses_another_commands_output_as_the_demo_directory(tmp_path, capsys):
    """`rdbench demo --out DATASET --force` would write data/, runs/... into a dataset."""
    out = tmp_path / "tetrominoes"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "dataset", "entries": ["images.npy"]}))
    (out / "images.npy").write_text("x")
    assert main(["demo", "--out", str(out), "--force", "--device", "cpu"]) == 2
    assert "is an rdbench dataset directory" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "images.npy"]


def test_rdbench_debris_and_outputs_in_the_runs_do_not_block_a_rerun(tmp_path):
    """After `rdbench report results/demo/runs` (default RUNS/report), a kp analysis, or a
    kill that left a temporary file or an empty run directory, `make demo` still re-runs."""
    out = _earlier_demo(tmp_path)
    for sub, kind in (("report", "report"), ("kp/objectives", "kp-objectives")):
        (out / "runs" / sub).mkdir(parents=True)
        (out / "runs" / sub / MARKER).write_text(json.dumps({"kind": kind, "entries": []}))
    staged = out / "runs" / "kp" / temporary_name("jacobian", "partial")  # a killed kp analysis
    staged.mkdir()
    (staged / "jacobian.csv").write_text("x")
    (out / "runs" / "grids" / temporary_name("demo.json", "tmp")).write_text("{")
    (out / "runs" / "0123abcd").mkdir()
    demo.check_previous_demo(out)


def test_force_does_not_clear_runs_a_train_is_writing(tmp_path):
    import fcntl

    out = _earlier_demo(tmp_path)
    with (out / "runs" / "grids" / ".lock").open("a") as held:  # a running `rdbench train`
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another `rdbench train` is writing to"):
            demo._clear_previous_demo(out)
    assert (out / "runs" / "run1" / "config.json").is_file()


def test_what_rdbench_writes_in_the_runs_does_not_block_a_rerun(tmp_path):
    """Every file train and evaluate write in a run directory, at any depth."""
    out = _earlier_demo(tmp_path)
    run = out / "runs" / "run1"
    for name in ("status.json", "history.csv", "checkpoint.pt", "checkpoint.prev.pt",
                 "model.pt", "metrics.json", ".lock", "tb/events.out.tfevents.1.host",
                 temporary_name("model.pt", "tmp")):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("rdbench")
    (out / "runs" / "neighbours" / "random.npz").write_text("rdbench")
    demo.check_previous_demo(out)


def test_force_refuses_a_users_file_deep_in_an_output_in_the_runs(tmp_path):
    """RUNS/report/figures/my_notes.md (was: only report/'s top-level entries were checked)."""
    from rdbench.io import atomic_write_text, staged_directory

    out = _earlier_demo(tmp_path)
    with staged_directory(out / "runs" / "report", kind="report") as tmp:
        atomic_write_text(tmp / "figures" / "rd.png", "x")
    demo.check_previous_demo(out)
    (out / "runs" / "report" / "figures" / "my_notes.md").write_text("mine")
    with pytest.raises(InputError, match=re.escape(
            "runs (holds report/figures/my_notes.md, which rdbench did not write there)")):
        demo.check_previous_demo(out)


def test_force_refuses_symlinks_the_demo_would_remove(tmp_path):
    out = _earlier_demo(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (out / "runs" / "run1" / "model.pt").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=re.escape("runs (holds run1/model.pt")):
        demo.check_previous_demo(out)
    (out / "runs" / "run1" / "model.pt").unlink()
    shutil.rmtree(out / "report")
    (out / "report").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=re.escape("report (not an rdbench report)")):
        demo.check_previous_demo(out)
