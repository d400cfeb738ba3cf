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
              status: str = "done", architecture: str = "mlp1",
              options: dict | None = None) -> Path:
    options = options or {}
    run_id = f"{objective}-{architecture}-{split}-{beta}-{seed}"
    n_train = len(data.split(split).train)
    config = {"run_id": run_id, "name": "test", "dataset": str(data.path),
              "dataset_fingerprint": data.fingerprint, "split": split, "n_train": n_train,
              "architecture": architecture, "objective": objective, "objective_options": options,
              "beta": beta, "seed": seed, "iterations": 1, "batch_size": 8,
              "learning_rate": 1e-3, "latent_dim": 10, "checkpoint_every": 1, "log_every": 1,
              "precision": "fp32"}
    run_dir = runs_dir / run_id
    atomic_write_json(run_dir / "config.json", config)
    write_status(run_dir, status, 1)
    torch.manual_seed(seed)
    params = get_objective(objective).posterior_params(10, options)
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

    nn = np.load(_neighbours(runs_dir, "random"))
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
    # nor on the chunking: the posterior samples are drawn per set, not per batch
    assert rdbench(["evaluate", str(alone), *fast, "--batch-size", "37", "--force"]) == 0
    rechunked = read_metrics(alone)["r"]
    for part in ("train", "test"):
        for key, value in first["beta_vae-mlp1-random-2.0-1"][part].items():
            assert rechunked[part][key] == pytest.approx(value, rel=1e-5, abs=1e-5), (part, key)


BAD_OPTIONS = {
    "mi-batch-1": (["--mi-batch", "1"], "from 2 to 4,096"),
    "mi-batch-all": (["--mi-batch", "all"], "'exact'"),
    "iwae-samples-0": (["--iwae-samples", "0"], "from 1 to 100,000"),
    "iwae-subset-negative": (["--iwae-subset", "-1"], ">= 0"),
    "max-examples-negative": (["--max-examples", "-1"], ">= 0"),
    # absurd values that would exhaust memory or time: refused, the limit stated
    "iwae-samples-1e9": (["--iwae-samples", "1000000000"], "from 1 to 100,000"),
    "batch-size-1e5": (["--batch-size", "100000"], "from 1 to 4,096"),
    "mi-batch-1e5": (["--mi-batch", "100000"], "from 2 to 4,096"),
    "max-examples-1": (["--max-examples", "1"], "at least 2"),
}


@pytest.mark.parametrize(("extra", "says"), BAD_OPTIONS.values(), ids=BAD_OPTIONS)
def test_bad_options_exit_2_before_work(read_metrics, runs, extra: list[str], says: str,
                                        capsys) -> None:
    runs_dir, _ = runs
    assert rdbench(["evaluate", str(runs_dir), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdbench: error:") and err.count("\n") == 1 and says in err
    assert not read_metrics(runs_dir) and not (runs_dir / "neighbours").exists()


def test_help_states_the_limits(capsys) -> None:
    """The bounds of analysis.evaluate, as --help states them (analysis/cli.py stays
    torch-free, so it writes the numbers out: this keeps them equal)."""
    from analysis import evaluate

    with pytest.raises(SystemExit):
        rdbench(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, limit in [("--iwae-samples", evaluate.MAX_IWAE_SAMPLES),
                          ("--mi-batch", evaluate.MAX_MI_BATCH),
                          ("--batch-size", evaluate.MAX_BATCH_SIZE)]:
        assert f"{limit:,}" in text.split(option)[-1].split("--")[0], option


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


def test_dataset_moved_since_training_is_given_with_dataset(read_metrics, tmp_path: Path,
                                                            tiny_dataset, capsys) -> None:
    """--dataset DIR stands in for the path in config.json; the content must be the same."""
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dataset, tmp_path / "data")
    runs_dir = tmp_path / "runs"
    _make_run(runs_dir, tetrominoes.load(tmp_path / "data"), "random", "beta_vae", 1.0, 0)
    _make_run(runs_dir, tetrominoes.load(tmp_path / "data"), "random", "beta_vae", 1.0, 1,
              status="failed")
    (tmp_path / "data").rename(moved)
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    assert "no dataset directory at" in capsys.readouterr().err
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--dataset", str(moved)]) == 0
    assert "1 failed in training, 0 not finished" in capsys.readouterr().out
    assert len(read_metrics(runs_dir)) == 1
    config = json.loads((runs_dir / "beta_vae-mlp1-random-1.0-0" / "config.json").read_text())
    assert config["dataset"] == str(tmp_path / "data")  # the run's record is left as it was
    # a bad --dataset is refused even when every run is evaluated already
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--dataset", str(tmp_path / "no")]) == 2
    assert "no dataset directory at" in capsys.readouterr().err
    with (moved / "factors.csv").open("a") as f:  # other content: refused
        f.write("\n")
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--dataset", str(moved), "--force"]) == 2


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


# --- known answers: hand-built models whose posterior ignores x ---------------------------

KNOWN = ["--iwae-samples", "25", "--iwae-subset", "0", "--mi-batch", "64", "--nn-subset", "20",
         "--batch-size", "128", "--device", "cpu"]
_I, _J = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
# logits (3, 32, 32) that change under a transpose of height and width, and across channels
ASYMMETRIC = [0.25 * (_I - _J) + np.arange(3)[:, None, None] - 1.0,
              0.3 * (_J - _I) - 0.5 + 0.1 * np.arange(3)[:, None, None] * _I / 31]


def _hidden(monkeypatch, width: int) -> None:
    """mlp1 with ``width`` hidden units instead of 512: the same code paths, in less time."""
    from benchmark.architectures import registry

    monkeypatch.setitem(registry()["mlp1"].options, "hidden", width)


@pytest.fixture
def narrow(monkeypatch, one_thread):
    """Hidden width 8 (the hand-built models below do not use it) and one thread: fast."""
    _hidden(monkeypatch, 8)


def _set_mlp1(run_dir: Path, **tensors: np.ndarray) -> None:
    """Zero every weight and bias of the run's mlp1, then set the given ones ('encoder.3.bias')."""
    path = run_dir / "model.pt"
    state = {k: torch.zeros_like(v) for k, v in torch.load(path, weights_only=True).items()}
    for key, value in tensors.items():
        name = key.replace("_", ".")
        state[name] = torch.as_tensor(value, dtype=torch.float32).reshape(state[name].shape)
    atomic_torch_save(path, state)


def _block_tril(params: np.ndarray, block_size: int) -> np.ndarray:
    """L (d, d) from the encoder's extra outputs: log-variances (b = 1) or (a, b, o) per 2-block."""
    if block_size == 1:
        return np.diag(np.exp(params / 2))
    blocks = [np.array([[np.exp(a / 2), 0.0], [o, np.exp(b / 2)]])
              for a, b, o in params.reshape(-1, 3)]
    d = 2 * len(blocks)
    L = np.zeros((d, d))
    for k, block in enumerate(blocks):
        L[2 * k:2 * k + 2, 2 * k:2 * k + 2] = block
    return L


@pytest.mark.parametrize(("objective", "options", "n_params"),
                         [("beta_vae", {}, 10), ("beta_vae_block", {"block_size": 2}, 15)])
def test_constant_posterior_and_decoder_give_closed_form_metrics(
        narrow, read_metrics, tmp_path, tiny_dataset, objective, options, n_params) -> None:
    """q(z|x) = N(m, LLᵀ) and logits b for every x: D = Σ softplus(b) − x·b, R = KL, Î = 0,
    marginal KL = MC rate ≈ R, log p(x) = −D when q = p (else within [−D − R, −D])."""
    data = tetrominoes.load(tiny_dataset)
    block = options.get("block_size", 1)
    means = [np.zeros(10), np.linspace(-0.3, 0.3, 10)]
    params = [np.zeros(n_params), (np.linspace(-0.2, 0.2, n_params) if block == 1 else
                                   np.stack([np.linspace(-0.2, 0.2, 5), np.linspace(0.2, -0.1, 5),
                                             0.3 * (-1.0) ** np.arange(5)], 1).ravel())]
    runs_dir = tmp_path / "runs"
    for seed, (m, p, b) in enumerate(zip(means, params, ASYMMETRIC, strict=True)):
        run_dir = _make_run(runs_dir, data, "random", objective, 1.0, seed, options=options)
        _set_mlp1(run_dir, encoder_3_bias=np.concatenate([m, p]), decoder_2_bias=b)
    assert rdbench(["evaluate", str(runs_dir), *KNOWN]) == 0
    metrics = read_metrics(runs_dir)
    for seed, (m, p, b) in enumerate(zip(means, params, ASYMMETRIC, strict=True)):
        L = _block_tril(p, block)
        kl = 0.5 * ((L**2).sum() + m @ m - 10) - np.log(np.diag(L)).sum()
        # Var[log q(z) − log p(z)], z = m + Lε: ½ tr((LᵀL − I)²) + ‖Lᵀm‖²
        A = L.T @ L - np.eye(10)
        mc_var = 0.5 * np.trace(A @ A) + np.sum((L.T @ m) ** 2)
        for name, rows in zip(("train", "test"), data.split("random"), strict=True):
            s = metrics[f"{objective}-mlp1-random-1.0-{seed}"][name]
            x = data.images[rows].transpose(0, 3, 1, 2) / 255.0  # (N, 3, 32, 32) like the model
            distortion = np.logaddexp(0.0, b).sum() - (x.mean(0) * b).sum()
            assert s["n"] == len(rows)
            assert s["distortion"] == pytest.approx(distortion, abs=1e-2)
            assert s["rate"] == pytest.approx(kl, rel=1e-5, abs=1e-6)
            assert s["elbo"] == pytest.approx(-(distortion + kl), abs=1e-2)
            assert abs(s["mutual_information"]) < 1e-9  # q(z) = q(z|x): no information
            assert s["marginal_kl"] == pytest.approx(s["rate_mc"], abs=1e-9)
            assert abs(s["rate_mc"] - kl) <= 5 * math.sqrt(mc_var / len(rows)) + 1e-9
            if seed == 0:  # q = p: every importance weight is 1
                assert s["log_px"] == pytest.approx(-distortion, abs=1e-2)
            else:  # log p(x) + D = log mean_k w_k ≥ mean_k log w_k ≈ −R (Jensen); ≈ 0 for
                # K = 25: bias −χ²/2K ≥ −0.03, noise 0.016 (χ²(p‖q) = 0.62 and 1.54 here)
                assert -distortion - kl - 0.05 <= s["log_px"] <= -distortion + 0.05


def test_mutual_information_saturates_at_log_set_size_even_on_a_subset(
        narrow, read_metrics, tmp_path, tiny_dataset) -> None:
    """σ = e^-15 and far-apart means μ = Wx: Î = log |set| exactly, also with --max-examples 50."""
    data = tetrominoes.load(tiny_dataset)
    runs_dir = tmp_path / "runs"
    run_dir = _make_run(runs_dir, data, "random", "beta_vae", 1.0, 0)
    rng = np.random.default_rng(0)
    w1, w2 = 0.1 * rng.standard_normal((8, 3072)), rng.standard_normal((10, 8))
    offset = 50.0  # keeps every ReLU unit on: μ = w2·(w1·x + 50) − w2·50 = w2·w1·x
    _set_mlp1(run_dir, encoder_1_weight=w1, encoder_1_bias=np.full(8, offset),
              encoder_3_weight=np.concatenate([w2, np.zeros((10, 8))]),
              encoder_3_bias=np.concatenate([-offset * w2.sum(1), np.full(10, -30.0)]))
    fast = ["--iwae-samples", "2", "--iwae-subset", "10", "--mi-batch", "64", "--nn-subset",
            "20", "--device", "cpu"]
    for extra in (["--max-examples", "50"], []):
        assert rdbench(["evaluate", str(runs_dir), *fast, *extra, "--force"]) == 0
        for name, rows in zip(("train", "test"), data.split("random"), strict=True):
            s = read_metrics(runs_dir)[run_dir.name][name]
            assert s["n"] == (50 if extra else len(rows)) and s["set_size"] == len(rows)
            assert s["mutual_information"] == pytest.approx(math.log(len(rows)), abs=1e-6)
            assert s["marginal_kl"] == pytest.approx(s["rate_mc"] - math.log(len(rows)),
                                                     abs=1e-6)


def _kp_grid(path: Path, dataset: Path) -> Path:
    grid = {"name": "kp", "dataset": str(dataset), "splits": ["random"],
            "architectures": ["mlp1"], "block_sizes": [2],
            "objectives": ["grae", "grae_approx", "ae", "beta_vae_block"],
            "betas": [1.0], "seeds": [0], "iterations": 4, "batch_size": 8,
            "checkpoint_every": 4, "log_every": 2, "device": "cpu"}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in grid.items()) + "\n")
    return path


@pytest.mark.usefixtures("one_thread")
def test_kumar_poole_objectives_train_and_evaluate_on_cpu(
        read_metrics, tmp_path, tiny_dataset, monkeypatch) -> None:
    """GRAE, GRAE≈, AE, block β-VAE on CPU: finite, Î + KL = MC rate, 0 ≤ Î ≤ log N, IWAE ≥ ELBO."""
    _hidden(monkeypatch, 32)  # narrow layers, same code paths
    runs_dir = tmp_path / "runs"
    assert rdbench(["train", str(_kp_grid(tmp_path / "g.toml", tiny_dataset)),
                    "--out", str(runs_dir)]) == 0
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--iwae-samples", "10",
                    "--iwae-subset", "64"]) == 0
    metrics = read_metrics(runs_dir)
    objectives = {json.loads((runs_dir / k / "config.json").read_text())["objective"]
                  for k in metrics}
    assert objectives == {"grae", "grae_approx", "ae", "beta_vae_block"}
    for run_id, m in metrics.items():
        for name in ("train", "test"):
            s = m[name]
            assert set(s) >= KEYS and all(math.isfinite(v) for v in s.values()), (run_id, s)
            assert s["mutual_information"] + s["marginal_kl"] == pytest.approx(s["rate_mc"],
                                                                              abs=1e-6)
            # Î ≤ log N holds exactly; Î ≥ 0 up to the minibatch estimator's noise
            assert -1e-3 <= s["mutual_information"] <= math.log(s["n"]) + 1e-9, (run_id, s)
            assert s["elbo"] == pytest.approx(-(s["distortion"] + s["rate"]), abs=1e-9)
            assert s["log_px"] >= s["log_px_elbo"], (run_id, name)


# --- trust: settings, damaged runs, nothing written before every check -------------------

def _summary_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_metrics_made_with_other_settings_are_evaluated_again(read_metrics, runs,
                                                              capsys) -> None:
    """--iwae-subset 256 then 10: both runs re-evaluated (log_px on 10 examples), said in the
    summary; --batch-size alone changes no number, so nothing is; metrics without settings
    (an older file) count as other settings."""
    runs_dir, _ = runs
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    assert {m["test"]["log_px_n"] for m in read_metrics(runs_dir).values()} == {256}
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--iwae-subset", "10"]) == 0
    assert _summary_line(capsys).startswith(
        "evaluated 2 run(s) in 1 group(s) (re-evaluated 2 run(s) whose metrics had other "
        "settings); skipped 0 already evaluated")
    metrics = read_metrics(runs_dir)
    assert {m["test"]["log_px_n"] for m in metrics.values()} == {10}
    assert {m["settings"]["iwae_subset"] for m in metrics.values()} == {10}
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--iwae-subset", "10",
                    "--batch-size", "50"]) == 0
    assert _summary_line(capsys).startswith("evaluated 0 run(s) in 0 group(s); skipped 2")
    assert read_metrics(runs_dir) == metrics
    older = runs_dir / "beta_vae-mlp1-random-0.5-0" / "metrics.json"
    older.write_text(json.dumps({k: v for k, v in metrics[older.parent.name].items()
                                 if k != "settings"}))
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--iwae-subset", "10"]) == 0
    assert "(re-evaluated 1 run(s) whose metrics had other settings); skipped 1" \
        in _summary_line(capsys)
    assert read_metrics(runs_dir) == metrics  # the same settings: the same numbers


def test_neighbours_made_with_another_nn_subset_are_recomputed(runs) -> None:
    runs_dir, _ = runs
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    path = _neighbours(runs_dir, "random")
    with np.load(path) as nn:
        assert len(nn["test"]) == 60 and int(nn["nn_subset"]) == 60
        older = {k: nn[k] for k in ("test", "distance", "nearest", "hard")}
    assert rdbench(["evaluate", str(runs_dir), *FAST, "--nn-subset", "30"]) == 0
    with np.load(path) as nn:
        assert len(nn["test"]) == 30 and int(nn["nn_subset"]) == 30
    np.savez(path, **older)  # a file from before the settings were stored: recomputed
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    with np.load(path) as nn:
        assert len(nn["test"]) == 60 and int(nn["nn_subset"]) == 60
        assert np.array_equal(nn["distance"], older["distance"])  # seeded: the same rows


DAMAGED_CONFIGS = {
    "not an object": lambda c: [c],
    "beta a string": lambda c: {**c, "beta": "one"},
    "beta not finite": lambda c: {**c, "beta": float("inf")},
    "latent_dim missing": lambda c: {k: v for k, v in c.items() if k != "latent_dim"},
    "split not a string": lambda c: {**c, "split": 3},
    "options a list": lambda c: {**c, "objective_options": []},
    "seed a float": lambda c: {**c, "seed": 1.5},
    "run_id null": lambda c: {**c, "run_id": None},
}


@pytest.mark.parametrize("damage", DAMAGED_CONFIGS)
def test_a_damaged_run_config_is_one_line_before_anything_is_written(
        read_metrics, runs, damage: str, capsys) -> None:
    runs_dir, _ = runs
    path = runs_dir / "beta_vae-mlp1-random-2.0-1" / "config.json"
    path.write_text(json.dumps(DAMAGED_CONFIGS[damage](json.loads(path.read_text()))))
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rdbench: error: {path} is damaged") and err.count("\n") == 1
    assert not read_metrics(runs_dir) and not (runs_dir / "neighbours").exists()


def test_a_bad_run_of_a_later_group_makes_evaluate_write_nothing(read_metrics, runs,
                                                                 capsys) -> None:
    """A second group (another split) whose model.pt is not a state dict: refused in one
    line, without torch's weights_only=False advice, before the first group's metrics or
    any neighbours are written."""
    runs_dir, data = runs
    bad = _make_run(runs_dir, data, "cv-16384", "beta_vae", 1.0, 0)
    (bad / "model.pt").write_bytes(b"not a model")
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rdbench: error:") and err.count("\n") == 1 and bad.name in err
    assert "weights_only" not in err
    assert not read_metrics(runs_dir) and not (runs_dir / "neighbours").exists()


def test_neighbours_that_is_not_a_directory_is_refused(read_metrics, runs, capsys) -> None:
    runs_dir, _ = runs
    (runs_dir / "neighbours").write_text("mine")
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    err = capsys.readouterr().err
    assert "neighbours is not a directory" in err and err.count("\n") == 1
    assert not read_metrics(runs_dir) and (runs_dir / "neighbours").read_text() == "mine"


def test_a_run_whose_fingerprint_is_not_its_datasets_is_refused(read_metrics, runs,
                                                                  capsys) -> None:
    """A run trained on other data (its recorded fingerprint is not the dataset's): never
    evaluated on this one, and nothing written."""
    runs_dir, _ = runs
    path = runs_dir / "beta_vae-mlp1-random-2.0-1" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dataset_fingerprint": "x"}))
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 2
    assert "changed since training" in capsys.readouterr().err
    assert not read_metrics(runs_dir) and not (runs_dir / "neighbours").exists()


def _neighbours(runs_dir, split):
    """``neighbours/<split>.<fingerprint>.npz`` of the one dataset of these tests."""
    (path,) = (runs_dir / "neighbours").glob(f"{split}.*.npz")
    return path


def test_leftovers_of_killed_writes_are_removed_never_a_live_one_or_a_users(runs,
                                                                          capsys) -> None:
    """A write killed while --force re-evaluated a run leaves a temporary file beside a
    metrics.json that the next evaluate skips (and beside neighbours it does not recompute):
    removed all the same, but never one a live evaluate holds, nor a user's look-alike."""
    from rdbench.files import temporary_name
    from rdbench.io import exclusive_lock

    runs_dir, _ = runs
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    run = runs_dir / "beta_vae-mlp1-random-0.5-0"
    killed = [run / temporary_name("metrics.json", "tmp"),
              runs_dir / "neighbours" / temporary_name(_neighbours(runs_dir, "random").name,
                                                        "tmp")]
    live = run / temporary_name("metrics.json", "tmp")
    users = run / ".metrics.json.0123456789ab.tmp"  # the shape, not rdbench's signature
    for path in [*killed, live, users]:
        path.write_text("partial")
    with exclusive_lock(live) as held:  # as a running evaluate holds its temporary file
        assert held
        assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    assert "evaluated 0 run(s)" in _summary_line(capsys)
    assert not any(p.exists() for p in killed) and live.exists() and users.exists()


def test_encode_set_memory_is_flat_in_the_set_size(tmp_path) -> None:
    """6 mlp1 models (128 hidden units) on 12,000 images: the outputs need 6 MB and a chunk
    of 256 ~80 MB, so the peak grows by far less than 300 MB. Per-chunk tensors kept in
    lists and joined at the end fragmented glibc's heap: +700 MB here, 21.5 GB for six
    full-width runs on cv-8192's 155,648 test images."""
    import subprocess
    import sys

    script = tmp_path / "measure.py"
    script.write_text(_MEASURE_ENCODE_SET)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, timeout=300)
    grown_mb = float(out.stdout.split()[-1])
    assert 0 <= grown_mb < 300, out.stdout


_MEASURE_ENCODE_SET = """
import resource
import numpy as np, torch
from analysis.metrics import EvalSettings, ModelGroup, encode_set
from benchmark.models import build_model

torch.set_num_threads(1)
group = ModelGroup([build_model("mlp1", options={"hidden": 128}) for _ in range(6)],
                   [{"objective": "beta_vae", "run_id": str(i), "beta": 1.0} for i in range(6)])
images = np.random.default_rng(0).integers(0, 256, (12000, 32, 32, 3), dtype=np.uint8)
generators = [torch.Generator().manual_seed(i) for i in range(6)]
encode_set(group, images, np.arange(256), generators, EvalSettings())  # one chunk's peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
encode_set(group, images, np.arange(len(images)), generators, EvalSettings())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_neighbours_of_runs_without_a_fingerprint_are_made_once(runs, capsys) -> None:
    """Runs of an older version record no dataset fingerprint: their neighbours file is
    ``<split>.npz`` (``neighbours_name``), written once and current on the next evaluate
    (not recomputed, renamed or deleted), and the leftovers of its killed writes are found
    under that name."""
    from rdbench.files import temporary_name

    runs_dir, data = runs
    for path in runs_dir.glob("*/config.json"):
        config = json.loads(path.read_text())
        del config["dataset_fingerprint"]
        path.write_text(json.dumps(config))
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    neighbours = runs_dir / "neighbours" / "random.npz"
    assert sorted(p.name for p in neighbours.parent.glob("*.npz")) == ["random.npz"]
    with np.load(neighbours) as nn:
        assert str(nn["dataset_fingerprint"]) == data.fingerprint  # what it was made on
    made = neighbours.stat()
    killed = neighbours.parent / temporary_name("random.npz", "tmp")
    killed.write_text("partial")
    assert rdbench(["evaluate", str(runs_dir), *FAST]) == 0
    assert "evaluated 0 run(s)" in _summary_line(capsys)
    again = neighbours.stat()
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert sorted(p.name for p in neighbours.parent.glob("*.npz")) == ["random.npz"]
    assert not killed.exists()
