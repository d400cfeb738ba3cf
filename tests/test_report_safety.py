"""``rdbench report`` never reads a file through a symlink that leads outside RUNS_DIR
(issue #13: a link in RUNS/kp/<analysis>/ had its target, e.g. a credentials file, inlined
into index.html)."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from analysis.report import build_report

SECRET = b"\x89PNG\r\n\x1a\n" + b"aws_secret_access_key=EXAMPLE" * 20


def _runs(root: Path) -> Path:
    """Two evaluated β-VAE runs (no dataset: reconstructions and dataset figures skip)."""
    for seed in (0, 1):
        run = root / f"run{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({
            "run_id": run.name, "split": "random", "architecture": "mlp1",
            "objective": "beta_vae", "beta": 1.0, "seed": seed, "n_train": 100,
            "dataset": "/nonexistent"}))
        (run / "status.json").write_text(json.dumps({"status": "done", "reason": None,
                                                     "iteration": 1}))
        numbers = {"n": 100, "distortion": 50.0 + seed, "rate": 10.0, "elbo": -60.0,
                   "mutual_information": 4.0, "marginal_kl": 6.0, "log_px": -58.0}
        (run / "metrics.json").write_text(json.dumps({"train": numbers, "test": numbers,
                                                      "settings": {}}))
    return root


@pytest.fixture
def linked_runs(tmp_path: Path) -> Path:
    runs = _runs(tmp_path / "RUNS")
    (tmp_path / "credentials.png").write_bytes(SECRET)
    (runs / "kp" / "objectives").mkdir(parents=True)
    (runs / "kp" / "objectives" / "objectives.png").symlink_to(tmp_path / "credentials.png")
    np.savez(tmp_path / "elsewhere.npz", test=np.arange(3), distance=np.ones(3, np.float32),
             nearest=np.arange(3), hard=np.int64(1))
    (runs / "neighbours").mkdir()
    (runs / "neighbours" / "random.npz").symlink_to(tmp_path / "elsewhere.npz")
    return runs


def test_links_out_of_the_runs_are_skipped_with_a_warning_and_a_note(linked_runs, capsys):
    out = build_report(linked_runs, linked_runs.parent / "report")
    page = (out / "index.html").read_bytes()
    assert base64.b64encode(SECRET)[:40] not in page and b"aws_secret" not in page
    assert not (out / "figures" / "kp_objectives.png").exists()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "symbolic link to a file outside" in line]
    assert len(warnings) == 2, err  # the kp figure and the neighbours file, one line each
    markdown = (out / "report.md").read_text()
    assert "objectives.png is a symbolic link to a file outside" in markdown
    assert "skipped random.npz: a symbolic link to a file outside" in markdown
    assert not any(p.is_symlink() for p in out.rglob("*"))


def test_a_link_within_the_runs_is_followed(tmp_path, capsys):
    runs = _runs(tmp_path / "RUNS")
    (runs / "kp" / "objectives").mkdir(parents=True)
    (runs / "kept.png").write_bytes(b"\x89PNG\r\n\x1a\nours")
    (runs / "kp" / "objectives" / "objectives.png").symlink_to(runs / "kept.png")
    out = build_report(runs, tmp_path / "report")
    copied = out / "figures" / "kp_objectives.png"
    assert copied.read_bytes() == b"\x89PNG\r\n\x1a\nours" and not copied.is_symlink()
    assert "symbolic link" not in capsys.readouterr().err
