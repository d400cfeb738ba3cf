"""``rdbench`` on a full disk: one line naming the file and what was kept, exit status 1,
no traceback, no partial output left (issue #13). The disk fills up at the ``fsync`` of a
chosen file, as a real ENOSPC would surface on a write or its flush."""

import errno
import os
from pathlib import Path

import pytest

from rdbench.cli import main

GRID_2 = ["--workers", "1", "--grid", "2", "2", "2", "2", "2"]
FAST = ["--iwae-samples", "4", "--iwae-subset", "20", "--mi-batch", "64", "--nn-subset", "20",
        "--max-examples", "64", "--batch-size", "64", "--device", "cpu"]


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at("images.npy")``: the flush of any file whose name holds that text
    fails with ENOSPC (its temporary name included, as the writers see it)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    fsync = os.fsync

    def fill(text: str, errno_: int = errno.ENOSPC) -> None:
        def full(fd):
            if text in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno_, os.strerror(errno_))
            return fsync(fd)

        monkeypatch.setattr(os, "fsync", full)
    return fill


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("rdbench: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_generate_on_a_full_disk_removes_the_partial_dataset(tmp_path, disk_full_at, capsys):
    out = tmp_path / "ds"
    disk_full_at("images.npy")
    assert main(["data", "generate", "--out", str(out), *GRID_2]) == 1
    line = _error_line(capsys)
    assert line == (f"rdbench: error: no space left on device while writing {out}/images.npy; "
                    f"the partial output was removed ({out} was not created)")
    assert list(tmp_path.iterdir()) == []


def test_generate_force_on_a_full_disk_keeps_the_earlier_dataset(tmp_path, disk_full_at,
                                                                 capsys):
    out = tmp_path / "ds"
    assert main(["data", "generate", "--out", str(out), *GRID_2]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    disk_full_at("manifest.json", errno.EDQUOT)
    assert main(["data", "generate", "--out", str(out), "--force", "--seed", "1", *GRID_2]) == 1
    assert _error_line(capsys).endswith(f"; the partial output was removed; kept: {out} as it "
                                        "was")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


@pytest.fixture
def evaluated(tmp_path, tiny_dataset, one_thread) -> Path:
    """Two untrained β-VAE runs on the tiny dataset, one evaluated."""
    import tetrominoes
    from benchmark.models import build_model
    from benchmark.runs import write_status
    from rdbench.io import atomic_torch_save, atomic_write_json

    data = tetrominoes.load(tiny_dataset)
    runs = tmp_path / "runs"
    for beta in (0.5, 2.0):
        run = runs / f"beta-{beta}"
        atomic_write_json(run / "config.json", {
            "run_id": run.name, "name": "t", "dataset": str(data.path),
            "dataset_fingerprint": data.fingerprint, "split": "random", "n_train": 256,
            "architecture": "mlp1", "objective": "beta_vae", "objective_options": {},
            "beta": beta, "seed": 0, "iterations": 1, "batch_size": 8, "learning_rate": 1e-3,
            "latent_dim": 10, "checkpoint_every": 1, "log_every": 1, "precision": "fp32"})
        write_status(run, "done", 1)
        atomic_torch_save(run / "model.pt", build_model("mlp1").state_dict())
    return runs


def test_evaluate_on_a_full_disk_keeps_the_runs_evaluated_before(evaluated, disk_full_at,
                                                                 capsys):
    disk_full_at("beta-2.0/.metrics.json")
    assert main(["evaluate", str(evaluated), *FAST]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"rdbench: error: no space left on device while writing "
                           f"{evaluated}/beta-2.0/metrics.json; no file was left half-written")
    assert (evaluated / "beta-0.5" / "metrics.json").is_file()
    assert sorted(p.name for p in (evaluated / "beta-2.0").iterdir()) == [
        "config.json", "model.pt", "status.json"]


def test_report_on_a_full_disk_keeps_the_earlier_report(evaluated, disk_full_at, capsys):
    assert main(["evaluate", str(evaluated), *FAST]) == 0
    report = evaluated / "report"
    assert main(["report", str(evaluated)]) == 0
    before = {p: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    disk_full_at("index.html")
    assert main(["report", str(evaluated), "--force"]) == 1
    assert _error_line(capsys) == (
        f"rdbench: error: no space left on device while writing {report}/index.html; the "
        f"partial output was removed; kept: {report} as it was")
    assert {p: p.read_bytes() for p in report.rglob("*") if p.is_file()} == before
    assert not [p for p in evaluated.iterdir() if p.name.startswith(".")]


def test_other_os_errors_are_not_hidden(tmp_path, disk_full_at):
    disk_full_at("images.npy", errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        main(["data", "generate", "--out", str(tmp_path / "ds"), *GRID_2])


def test_a_read_only_file_system_is_one_line_too(tmp_path, disk_full_at, capsys):
    disk_full_at("images.npy", errno.EROFS)
    assert main(["data", "generate", "--out", str(tmp_path / "ds"), *GRID_2]) == 1
    assert _error_line(capsys).startswith("rdbench: error: read-only file system while "
                                          f"writing {tmp_path}/ds/images.npy;")
