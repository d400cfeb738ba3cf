"""`rdbench evaluate` on a tiny fake runs directory (untrained models, tiny dataset)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tetrominoes
from analysis.evaluate import posterior
from benchmark.models import build_model
from benchmark.objectives import get_objective
from benchmark.runs import write_status
from rdbench.cli import main as rdbench
from rdbench.io import atomic_torch_save, atomic_write_json

FAST = ["--iwae-samples", "30", "--iwae-subset", "0", "--mi-batch", "64", "--nn-subset", "60",
        "--batch-size", "100", "--device", "cpu"]
KEYS = {"n", "distortion", "rate", "elbo", "mutual_information", "marginal_kl", "log_px"}


def _make_run(runs_dir: Path, data, split: str, objective: str, beta: float, seed: int,
              status: str = "done", architecture: str = "mlp1") -> Path:
    run_id = f"{objective}-{architecture}-{split}-{beta}-{seed}"
    n_train = len(data.split(split).train)
    config = {"run_id": run_id, "name": "test", "dataset": str(data.path),
              "dataset_fingerprint": data.fingerprint, "split": split, "n_train": n_train,
              "architecture": architecture, "objective": objective, "objective_options": {},
              "beta": beta, "seed": seed, "iterations": 1, "batch_size": 8,
              "learning_rate": 1e-3, "latent_dim": 10, "checkpoint_every": 1, "log_every": 1,
              "precision": "fp32"}
    run_dir = runs_dir / run_id
    atomic_write_json(run_dir / "config.json", config)
    write_status(run_dir, status, 1)
    torch.manual_seed(seed)
    params = get_objective(objective).posterior_params(10, {})
    model = build_model(architecture, posterior_params=params)
    atomic_torch_save(run_dir / "model.pt", model.state_dict())
    return run_dir


@pytest.fixture
def runs(tmp_path: Path, tiny_dataset) -> tuple[Path, object]:
    data = tetrominoes.load(tiny_dataset)
    runs_dir = tmp_path / "runs"
    _make_run(runs_dir, data, "random", "beta_vae", 0.5, 0)
    _make_run(runs_dir, data, "random", "beta_vae", 2.0, 1)
    _make_run(runs_dir, data, "random", "beta_vae", 1.0, 2, status="running")
    return runs_dir, data


def test_evaluate_writes_consistent_metrics_and_neighbours(read_metrics, runs, capsys) -> None:
    runs_dir, data = runs
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    metrics = read_metrics(runs_dir)
    assert sorted(metrics) == ["beta_vae-mlp1-random-0.5-0", "beta_vae-mlp1-random-2.0-1"]
    n_train, n_test = (len(rows) for rows in data.split("random"))
    for m in metrics.values():
        assert m["settings"]["iwae_samples"] == 30 and m["settings"]["mi_batch"] == 64
        for name, n in (("train", n_train), ("test", n_test)):
            s = m[name]
            assert set(s) >= KEYS and s["n"] == n
            assert s["mutual_information"] <= math.log(n) + 1e-9
            assert s["mutual_information"] + s["marginal_kl"] == pytest.approx(s["rate_mc"],
                                                                              abs=1e-6)
            assert s["elbo"] == pytest.approx(-(s["distortion"] + s["rate"]), abs=1e-9)
            assert s["log_px"] >= s["elbo"]
            assert s["log_px"] >= s["log_px_elbo"]  # the bound on the very same examples
    assert "evaluated 2 run(s)" in capsys.readouterr().out

    nn = np.load(runs_dir / "neighbours" / "random.npz")
    train, test = data.split("random")
    assert len(nn["test"]) == 60 and np.isin(nn["test"], test).all()
    assert np.isin(nn["nearest"], train).all() and int(nn["hard"]) in nn["test"]
    images = data.images.astype(np.float64) / 255
    for row, dist, near in list(zip(nn["test"], nn["distance"], nn["nearest"], strict=True))[:5]:
        brute = np.sqrt(((images[train] - images[row]) ** 2).reshape(len(train), -1).sum(1))
        assert dist == pytest.approx(brute.min(), rel=1e-5) and near == train[brute.argmin()]
    assert (nn["distance"] <= nn["distance"][list(nn["test"]).index(int(nn["hard"]))]).mean() \
        == pytest.approx(0.9, abs=0.02)


def test_rerun_skips_force_recomputes_same_numbers_and_runs_are_group_independent(
        runs, capsys, tmp_path: Path, read_metrics) -> None:
    runs_dir, _ = runs
    fast = [*FAST, "--iwae-samples", "4"]  # the last value wins
    assert rdbench(["evaluate", str(runs_dir), *fast]) == 0
    first = read_metrics(runs_dir)
    stamp = {k: (runs_dir / k / "metrics.json").stat().st_mtime_ns for k in first}
    assert rdbench(["evaluate", str(runs_dir), *fast]) == 0
    assert "evaluated 0 run(s)" in capsys.readouterr().out.splitlines()[-1]
    assert all((runs_dir / k / "metrics.json").stat().st_mtime_ns == t for k, t in stamp.items())
    assert rdbench(["evaluate", str(runs_dir), *fast, "--force"]) == 0
    assert read_metrics(runs_dir) == first  # seeded per run: identical numbers
    alone = tmp_path / "alone"
    shutil.copytree(runs_dir / "beta_vae-mlp1-random-2.0-1", alone / "r")
    assert rdbench(["evaluate", str(alone), *fast, "--force"]) == 0
    single = read_metrics(alone)["r"]["test"]
    for key, value in first["beta_vae-mlp1-random-2.0-1"]["test"].items():
        assert single[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


@pytest.mark.parametrize("extra", [["--mi-batch", "1"], ["--mi-batch", "all"],
                                   ["--iwae-samples", "0"], ["--iwae-subset", "-1"],
                                   ["--max-examples", "-1"]])
def test_bad_options_exit_2_before_work(read_metrics, runs, extra: list[str], capsys) -> None:
    runs_dir, _ = runs
    assert rdbench(["evaluate", str(runs_dir), "--device", "cpu", *extra]) == 2
    assert "rdbench: error:" in capsys.readouterr().err
    assert not read_metrics(runs_dir) and not (runs_dir / "neighbours").exists()


def test_bad_runs_dir_or_dataset_exit_2(read_metrics, tmp_path: Path, runs) -> None:
    assert rdbench(["evaluate", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert rdbench(["evaluate", str(tmp_path / "empty")]) == 2
    runs_dir, _ = runs
    path = runs_dir / "beta_vae-mlp1-random-0.5-0" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "dataset": str(tmp_path / "nowhere")}))
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    assert not read_metrics(runs_dir)


def test_posterior_hook_mean_field_and_registered(monkeypatch) -> None:
    torch.manual_seed(0)
    model = build_model("mlp1")
    x = torch.rand(4, 3, 32, 32)
    mu, logvar, tril = posterior({"objective": "beta_vae"}, model, x)
    ref_mu, ref_lv = model.encode(x)
    assert torch.equal(mu, ref_mu) and torch.equal(logvar, ref_lv) and tril is None

    from benchmark import implicit

    def fake(model, x, beta, options):
        h = model.encode(x)[0]
        return h, torch.eye(10).expand(len(x), 10, 10) * beta

    monkeypatch.setattr(implicit, "POSTERIORS", {"beta_vae": fake}, raising=False)
    mu, logvar, tril = posterior({"objective": "beta_vae", "beta": 0.5}, model, x)
    assert logvar is None and torch.equal(tril, torch.eye(10).expand(4, 10, 10) * 0.5)


def test_max_examples_evaluates_a_seeded_subset(read_metrics, runs) -> None:
    runs_dir, data = runs
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--iwae-samples", "2",
                    "--max-examples", "50"]) == 0
    for m in read_metrics(runs_dir).values():
        for name, rows in zip(("train", "test"), data.split("random"), strict=True):
            assert m[name]["n"] == 50 and m[name]["set_size"] == len(rows)
            assert m[name]["log_px_n"] == 50
            # the subset keeps the whole set's aggregate posterior: Î ≤ log |set|
            assert m[name]["mutual_information"] <= math.log(len(rows)) + 1e-9
