"""``rdbench train`` end to end on a tiny dataset: runs on disk, resume, failures, Dask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import runs as runs_io
from rdbench.cli import main
from rdbench.io import InputError


def _write_grid(path: Path, dataset: Path, **overrides) -> Path:
    grid = {"name": "tiny", "dataset": str(dataset), "splits": ["random"],
            "architectures": ["mlp1"], "betas": [0.5, 2.0], "seeds": [0, 1],
            "iterations": 12, "batch_size": 8, "checkpoint_every": 4, "log_every": 2,
            "device": "cpu"}
    grid.update(overrides)
    lines = [f"{k} = {json.dumps(v)}" for k, v in grid.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _statuses(runs_dir: Path) -> dict[str, str]:
    return {d.name: runs_io.read_status(d)["status"] for d in runs_io.find_runs(runs_dir)}


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def _narrow_layers(monkeypatch) -> None:
    """mlp1 with 32 hidden units instead of 512: the same code paths, in less time."""
    from benchmark.architectures import registry

    monkeypatch.setitem(registry()["mlp1"].options, "hidden", 32)


def test_train_writes_runs_and_rerun_skips(tiny_dataset, tmp_path, capsys):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    statuses = _statuses(out)
    assert len(statuses) == 4 and set(statuses.values()) == {"done"}
    for run_dir in runs_io.find_runs(out):
        history = pd.read_csv(run_dir / "history.csv")
        assert list(history.columns[:4]) == ["iteration", "loss", "distortion", "rate"]
        assert history["iteration"].tolist() == [2, 4, 6, 8, 10, 12]
        assert not (run_dir / "checkpoint.pt").exists()
        model = runs_io.load_model(run_dir)
        assert model.decode(torch.zeros(1, 10)).shape == (1, 3, 32, 32)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")}
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert "skipped 4" in capsys.readouterr().err
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")}


def test_dry_run_writes_nothing(tiny_dataset, tmp_path, capsys):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "1 jobs" in printed and "PFLOP" in printed
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--backend", "dask"], "needs --scheduler"),
     (["--scheduler", "tcp://127.0.0.1:1"], "only used with --backend dask"),
     (["--workers", "0"], "--workers must be >= 1"),
     (["--device", "cuda:7"], "cuda")])
def test_bad_options_exit_2_before_work(tiny_dataset, tmp_path, capsys, args, message):
    if args[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_bf16_on_the_cpu_is_refused_before_work(tiny_dataset, tmp_path, capsys):
    """bf16 autocasts on CUDA only: on the cpu the runs would be fp32 under bf16 ids."""
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, precision="bf16")
    assert main(["train", str(config), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "CUDA only" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_and_foreign_out_dir(tiny_dataset, tmp_path, capsys):
    config = _write_grid(tmp_path / "g.toml", tmp_path / "no-such-dataset")
    assert main(["train", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "dataset directory not found" in capsys.readouterr().err
    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main(["train", str(config), "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    # the grid's own dataset, or a directory holding it, even with --force
    before = sorted(p.name for p in Path(tiny_dataset).parent.iterdir())
    for out, why in ((tiny_dataset, "is the input directory"),
                     (Path(tiny_dataset).parent, "contains the input directory")):
        assert main(["train", str(config), "--out", str(out), "--force"]) == 2
        assert why in capsys.readouterr().err
    assert sorted(p.name for p in Path(tiny_dataset).parent.iterdir()) == before


def test_diverging_run_fails_alone(tiny_dataset, tmp_path, monkeypatch):
    """One run's weights start as NaN: it is marked failed, its neighbour trains on."""
    import benchmark.trainer as trainer

    original = trainer.init_model

    def poisoned(spec, seed):
        model = original(spec, seed)
        if seed == 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(trainer, "init_model", poisoned)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[1.0], seeds=[0, 1])
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    by_seed = {runs_io.read_config(d)["seed"]: d for d in runs_io.find_runs(out)}
    assert runs_io.read_status(by_seed[0])["status"] == "done"
    failed = runs_io.read_status(by_seed[1])
    assert failed["status"] == "failed" and "non-finite" in failed["reason"].lower()
    healthy = _params(by_seed[0])
    assert all(torch.isfinite(t).all() for t in healthy.values())


def _train_subprocess(config: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "benchmark", "train", str(config),
                             "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(tiny_dataset, tmp_path):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, iterations=400,
                         checkpoint_every=50, log_every=25, betas=[1.0], seeds=[3])
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _train_subprocess(config, straight).wait(timeout=600) == 0
    proc = _train_subprocess(config, killed)
    deadline = time.time() + 300
    while not list(killed.glob("*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir,) = runs_io.find_runs(killed)
    lost_from = runs_io.read_status(run_dir)["iteration"]
    assert runs_io.read_status(run_dir)["status"] == "running" and lost_from < 400
    assert _train_subprocess(config, killed).wait(timeout=600) == 0
    a, b = _params(straight / run_dir.name), _params(run_dir)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    history = pd.read_csv(run_dir / "history.csv")
    assert history["iteration"].tolist() == list(range(25, 401, 25))


@pytest.mark.slow
def test_dask_backend_on_local_cluster(tiny_dataset, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, architectures=["mlp1", "cnn1"],
                         iterations=6, seeds=[0])
    out = tmp_path / "runs"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None, processes=True) as cluster:
        code = main(["train", str(config), "--out", str(out), "--backend", "dask",
                     "--scheduler", cluster.scheduler_address])
    assert code == 0
    assert set(_statuses(out).values()) == {"done"} and len(_statuses(out)) == 4


@pytest.mark.slow
def test_loky_workers_match_in_process(tiny_dataset, tmp_path):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, architectures=["mlp1", "cnn1"],
                         iterations=6, seeds=[0], betas=[1.0])
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", str(config), "--out", str(one)]) == 0
    assert main(["train", str(config), "--out", str(two), "--workers", "2"]) == 0
    for run_dir in runs_io.find_runs(one):
        a, b = _params(run_dir), _params(two / run_dir.name)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


# --- known answers: the optimiser descends, ablations see their training-set size -------


def _binary_entropy_nats(p: np.ndarray) -> float:
    """Σᵢ H_b(pᵢ) in nats (0·log 0 = 0), in float64."""
    p = p.astype(np.float64).ravel()
    inner = p[(p > 0) & (p < 1)]
    return float(-(inner * np.log(inner) + (1 - inner) * np.log1p(-inner)).sum())


@pytest.mark.usefixtures("one_thread")
def test_training_descends_to_the_entropy_floor_of_one_image():
    """Data = copies of one image x̄: D ≥ Σ H_b(x̄/255) always; Adam closes ≥ 90 % of the gap."""
    from benchmark.trainer import GroupSpec, train_group

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    images = np.repeat(image[None], 16, axis=0)  # (16, 32, 32, 3)
    floor = _binary_entropy_nats(image / 255.0)
    spec = GroupSpec("mlp1", "beta_vae", {}, (1.0,), (0,), iterations=100, batch_size=4,
                     learning_rate=1e-3, log_every=1, checkpoint_every=1000)
    distortion = []
    train_group(spec, images, device="cpu", progress=False,
                on_log=lambda it, rows: distortion.append(rows[0]["distortion"]))
    start, end = distortion[0], float(np.mean(distortion[-10:]))
    assert min(distortion) >= floor - 1e-2  # cross-entropy ≥ entropy, for any logits
    assert end - floor < 0.1 * (start - floor), (start, end, floor)


@pytest.mark.usefixtures("one_thread")
def test_ablation_runs_see_their_splits_training_set_size(tiny_dataset, tmp_path, monkeypatch):
    """no_mi / no_marginal_kl trained by `rdbench train`: every rate_terms call gets N = n_train."""
    import tetrominoes
    from benchmark import ablations

    seen = []
    rate_terms = ablations.rate_terms

    def spy(mu, logvar, z, dataset_size):
        seen.append(dataset_size)
        return rate_terms(mu, logvar, z, dataset_size)

    monkeypatch.setattr(ablations, "rate_terms", spy)
    _narrow_layers(monkeypatch)
    split = "cv-16384"  # 51 training rows: neither the batch, the test set nor the dataset
    n_train = len(tetrominoes.load(tiny_dataset).split(split).train)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, splits=[split],
                         objectives=["no_mi", "no_marginal_kl"], betas=[1.0], seeds=[0],
                         iterations=3, log_every=3, checkpoint_every=3)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0  # one worker: in process
    assert set(_statuses(out).values()) == {"done"} and len(_statuses(out)) == 2
    assert len(seen) == 2 * 3 and set(seen) == {n_train}, (seen, n_train)
    assert all(runs_io.read_config(d)["n_train"] == n_train for d in runs_io.find_runs(out))


@pytest.mark.usefixtures("one_thread")
def test_ae_trains_once_per_seed_and_every_beta_gets_that_model(tiny_dataset, tmp_path,
                                                                capsys, monkeypatch):
    """ae ignores β, so its runs of one seed are one model: trained once, copied to each β."""
    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, objectives=["ae"],
                         betas=[0.5, 2.0, 8.0])
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "1 jobs" in plan and "cost: 24 model-iterations" in plan  # 2 seeds × 12, not 6 × 12
    assert main(["train", str(config), "--out", str(out)]) == 0
    runs = {(c["seed"], c["beta"]): d for d in runs_io.find_runs(out)
            for c in [runs_io.read_config(d)]}
    assert len(runs) == 6 and set(_statuses(out).values()) == {"done"}
    alone = _write_grid(tmp_path / "alone.toml", tiny_dataset, objectives=["ae"], betas=[8.0])
    assert main(["train", str(alone), "--out", str(tmp_path / "alone")]) == 0
    for seed in (0, 1):
        first = _params(runs[seed, 0.5])
        for beta in (2.0, 8.0):
            copy = _params(runs[seed, beta])
            assert all(torch.equal(first[k], copy[k]) for k in first)
            history = [pd.DataFrame(runs_io.read_history(runs[seed, b])) for b in (0.5, beta)]
            assert history[0].equals(history[1])  # rate is NaN for ae: compare as frames
    # the copies are the models those runs train without their siblings at other βs
    for d in runs_io.find_runs(tmp_path / "alone"):
        copy = _params(runs[runs_io.read_config(d)["seed"], 8.0])
        assert all(torch.equal(v, copy[k]) for k, v in _params(d).items())
    assert not torch.equal(_params(runs[0, 0.5])["encoder.1.weight"],
                           _params(runs[1, 0.5])["encoder.1.weight"])


class _Killed(BaseException):
    """Stands for kill -9 between two file writes (nothing after it runs)."""


@pytest.mark.usefixtures("one_thread")
# kill k: right after the first run saved the (k + 1)-th checkpoint of that invocation
# (every 4 iterations). (1,): runs at 8, 4, 4 -> resume at 4. (1, 2): resumed at 4, saved 8
# and 12, killed with the runs at 16 (the final checkpoint), 12, 12 -> resume at 12.
@pytest.mark.parametrize(("kills", "resume_at"), [((1,), 4), ((1, 2), 12)])
def test_kill_between_two_runs_checkpoints_resumes_the_group_exactly(
        tiny_dataset, tmp_path, monkeypatch, kills, resume_at):
    """The runs of a group end bit-identical to an uninterrupted grid however the kill
    splits their checkpoints (one run a checkpoint ahead of the others)."""
    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[0.5, 2.0, 8.0], seeds=[0],
                         iterations=16, checkpoint_every=4, log_every=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", str(config), "--out", str(straight)]) == 0
    save = runs_io.save_checkpoint
    for kill in kills:
        calls = []

        def dies_after(run_dir, state, history, group, kill=kill, calls=calls):
            save(run_dir, state, history, group)
            calls.append(run_dir)
            if len(calls) == 3 * kill + 1:  # one run of three saved at this checkpoint
                raise _Killed

        monkeypatch.setattr(runs_io, "save_checkpoint", dies_after)
        with pytest.raises(_Killed):
            main(["train", str(config), "--out", str(killed)])
        iterations = {runs_io.read_status(d)["iteration"] for d in runs_io.find_runs(killed)}
        assert len(iterations) == 2  # the group is split across two checkpoints
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    from benchmark import trainer

    starts, train_group = [], trainer.train_group
    monkeypatch.setattr(trainer, "train_group", lambda spec, images, *, states=None, **kw: (
        starts.append([s.iteration for s in states or []]) or
        train_group(spec, images, states=states, **kw)))
    assert main(["train", str(config), "--out", str(killed)]) == 0
    # one job, from the last checkpoint all three runs had: at most one interval is lost
    assert starts == [[resume_at] * 3]
    for run_dir in runs_io.find_runs(straight):
        a, b = _params(run_dir), _params(killed / run_dir.name)
        assert all(torch.equal(a[k], b[k]) for k in a), run_dir.name
        assert not list((killed / run_dir.name).glob("checkpoint*.pt"))
        history = pd.read_csv(killed / run_dir.name / "history.csv")
        assert history["iteration"].tolist() == list(range(2, 17, 2))


@pytest.mark.usefixtures("one_thread")
def test_kill_between_an_ae_run_and_its_copy_retrains_them_together(
        tiny_dataset, tmp_path, monkeypatch):
    """`ae` trains one model per seed and copies it to the other β. Killed after the trained
    run's first checkpoint but before its copy's, the copy must not be retrained alone."""
    from benchmark import trainer

    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, objectives=["ae"],
                         betas=[0.5, 2.0], seeds=[0], iterations=8, checkpoint_every=4,
                         log_every=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", str(config), "--out", str(straight)]) == 0
    save = runs_io.save_checkpoint

    def dies_after_the_first(run_dir, state, history, group):
        save(run_dir, state, history, group)
        raise _Killed

    monkeypatch.setattr(runs_io, "save_checkpoint", dies_after_the_first)
    with pytest.raises(_Killed):
        main(["train", str(config), "--out", str(killed)])
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    trained, train_group = [], trainer.train_group
    monkeypatch.setattr(trainer, "train_group", lambda spec, images, **kw: (
        trained.append(spec.n_runs) or train_group(spec, images, **kw)))
    assert main(["train", str(config), "--out", str(killed)]) == 0
    assert trained == [1]  # one model, written to both runs
    for run_dir in runs_io.find_runs(straight):
        a, b = _params(run_dir), _params(killed / run_dir.name)
        assert all(torch.equal(a[k], b[k]) for k in a), run_dir.name


def test_damaged_run_files_are_one_clear_error(tiny_dataset, tmp_path, capsys):
    """A status.json that is not a status, a finished run's status.json lost (model.pt, no
    checkpoint), or a history.csv with a bad cell: one line, exit 2, nothing retrained.
    Temporary files of killed atomic writes are removed when a run resumes."""
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[1.0], seeds=[0])
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    capsys.readouterr()
    run = runs_io.find_runs(out)[0]
    model = (run / "model.pt").read_bytes()
    for text, why in (("{}", "is not a run status"), ("[\"done\"]", "is not a run status")):
        (run / "status.json").write_text(text)
        assert main(["train", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    (run / "status.json").unlink()
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "has a model.pt but its status.json" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == model
    runs_io.write_status(run, "running", 4)
    (run / "history.csv").write_text("iteration,loss\n2,oops\n")
    with pytest.raises(InputError, match="unreadable"):
        runs_io.read_history(run)
    from rdbench.files import temporary_name

    killed = run / temporary_name("checkpoint.pt", "tmp")  # rdbench's own, unlocked
    killed.write_bytes(b"half a checkpoint")
    users = run / ".checkpoint.pt.0123abcd.tmp"  # the shape, not rdbench's signature
    users.write_bytes(b"the user's")
    runs_io.rewind(run, 0)
    assert not killed.exists() and users.read_bytes() == b"the user's"


def test_damaged_dataset_is_refused_by_train_and_evaluate(tiny_dataset, tmp_path, capsys):
    """A dataset whose images no longer match the manifest's sha256: exit 2, nothing written."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    config = _write_grid(tmp_path / "g.toml", data, iterations=2, log_every=1,
                         checkpoint_every=2, betas=[1.0], seeds=[0])
    assert main(["train", str(config), "--out", str(tmp_path / "runs")]) == 0
    with (data / "images.npy").open("r+b") as f:  # flip one pixel byte past the header
        f.seek(-1, 2)
        byte = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "runs")]) == 2
    assert main(["train", str(config), "--out", str(tmp_path / "more")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("checksum mismatch: images.npy" in line for line in err)
    assert not (tmp_path / "more").exists()
    assert not list((tmp_path / "runs").glob("*/metrics.json"))


@pytest.mark.parametrize("address", ["notanaddress", "tcp://127.0.0.1:1"])
def test_unreachable_dask_scheduler_is_one_line_before_anything_is_written(
        tiny_dataset, tmp_path, capsys, monkeypatch, address):
    pytest.importorskip("dask.distributed")
    from benchmark import runner, train

    monkeypatch.setattr(train, "connect", lambda scheduler: runner.connect(scheduler, timeout=2))
    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out), "--backend", "dask",
                 "--scheduler", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the Dask scheduler at {address!r}" in err[0], err
    assert not out.exists()


@pytest.mark.usefixtures("one_thread")
def test_checkpoints_from_before_they_named_their_job_still_resume(tiny_dataset, tmp_path,
                                                                   monkeypatch):
    """A checkpoint without ``group`` (written by earlier versions) resumes at its iteration."""
    from benchmark import trainer

    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[0.5, 2.0, 8.0], seeds=[0],
                         iterations=16, checkpoint_every=4, log_every=2)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", str(config), "--out", str(straight)]) == 0
    save, calls = runs_io.save_checkpoint, []

    def dies_after_8(run_dir, state, history, group):
        save(run_dir, state, history, group)
        calls.append(run_dir)
        if len(calls) == 6:  # every run has saved iteration 8
            raise _Killed

    monkeypatch.setattr(runs_io, "save_checkpoint", dies_after_8)
    with pytest.raises(_Killed):
        main(["train", str(config), "--out", str(killed)])
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    for path in killed.glob("*/checkpoint*.pt"):  # as written before the group field
        payload = torch.load(path, weights_only=True)
        del payload["group"]
        torch.save(payload, path)
    starts, train_group = [], trainer.train_group
    monkeypatch.setattr(trainer, "train_group", lambda spec, images, *, states=None, **kw: (
        starts.append([s.iteration for s in states or []]) or
        train_group(spec, images, states=states, **kw)))
    assert main(["train", str(config), "--out", str(killed)]) == 0
    assert starts == [[8, 8, 8]]
    for run_dir in runs_io.find_runs(straight):
        a, b = _params(run_dir), _params(killed / run_dir.name)
        assert all(torch.equal(a[k], b[k]) for k in a), run_dir.name


def test_a_second_train_into_the_same_runs_is_refused_while_the_first_runs(
        tiny_dataset, tmp_path, capsys):
    """Two writers would rewind each other's checkpoints: the second gets one line, exit 2."""
    import fcntl

    config = _write_grid(tmp_path / "g.toml", tiny_dataset, iterations=2, log_every=1,
                         checkpoint_every=2)
    out = tmp_path / "runs"
    (out / "grids").mkdir(parents=True)
    with (out / "grids" / ".lock").open("a") as held:  # as the first `rdbench train` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["train", str(config), "--out", str(out)]) == 2
        assert "another `rdbench train` is writing to" in capsys.readouterr().err
        assert not runs_io.find_runs(out)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert main(["train", str(config), "--out", str(out)]) == 0


def test_rerun_tidies_checkpoints_a_kill_in_finish_left_in_a_finished_run(tiny_dataset,
                                                                          tmp_path):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, iterations=2, log_every=1,
                         checkpoint_every=2, betas=[1.0], seeds=[0])
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    (run_dir,) = runs_io.find_runs(out)
    model = (run_dir / "model.pt").read_bytes()
    for name in runs_io.CHECKPOINTS:  # killed after the status, before the unlinks
        (run_dir / name).write_bytes(model)
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert not list(run_dir.glob("checkpoint*.pt"))
    assert (run_dir / "model.pt").read_bytes() == model  # not retrained


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("objective", "note"), [("beta_vae", True), ("ae", False)])
def test_resuming_without_runs_dropped_from_the_grid_says_so(tiny_dataset, tmp_path,
                                                             monkeypatch, capsys, objective,
                                                             note):
    """A note when a resumed group lost a run it trained with; none for an ae copy (the
    trained model is the same whichever βs remain)."""
    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[0.5, 2.0], seeds=[0],
                         iterations=8, checkpoint_every=4, log_every=2, objectives=[objective])
    out, save, calls = tmp_path / "runs", runs_io.save_checkpoint, []

    def dies_after_4(run_dir, state, history, group):
        save(run_dir, state, history, group)
        calls.append(run_dir)
        if len(calls) == 2:  # both runs saved iteration 4
            raise _Killed

    monkeypatch.setattr(runs_io, "save_checkpoint", dies_after_4)
    with pytest.raises(_Killed):
        main(["train", str(config), "--out", str(out)])
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    capsys.readouterr()
    fewer = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[2.0], seeds=[0],
                        iterations=8, checkpoint_every=4, log_every=2, objectives=[objective])
    assert main(["train", str(fewer), "--out", str(out)]) == 0
    said = "1 run(s) resume without 1 run(s) they trained with" in capsys.readouterr().err
    assert said == note


def test_claim_slot_takes_the_first_free_slot_and_frees_it(tmp_path):
    """Jobs take devices by free slot: held slots are skipped, a freed one is taken again,
    and a claim with every slot held is an error rather than a doubly booked device."""
    from benchmark.runner import claim_slot

    slots = ["cuda:0", "cuda:1", "cuda:2"]
    with claim_slot(tmp_path, slots) as a, claim_slot(tmp_path, slots) as b:
        assert (a, b) == (0, 1)
        with claim_slot(tmp_path, slots) as c:
            assert c == 2
            with pytest.raises(RuntimeError, match="busy"), claim_slot(tmp_path, slots):
                pass
    with claim_slot(tmp_path, slots) as a:
        assert a == 0
        with claim_slot(tmp_path, slots) as b:
            assert b == 1
    # --workers 3 over two GPUs: with cuda:0's second slot busy, the next job goes to the
    # idle cuda:1, not to cuda:0's free first slot
    slots = ["cuda:0", "cuda:1", "cuda:0"]
    with claim_slot(tmp_path, slots) as a, claim_slot(tmp_path, slots) as b:
        assert [slots[a], slots[b]] == ["cuda:0", "cuda:1"]
    (tmp_path / "slot-2").touch()                     # held by a job still running
    with claim_slot(tmp_path, slots) as c:
        assert slots[c] == "cuda:1"


def test_a_job_planned_before_its_runs_were_trained_elsewhere_leaves_them(
        tiny_dataset, tmp_path, capsys, monkeypatch):
    """The plan is made before dispatch; if the runs finish elsewhere in between (an
    orphaned Dask task), the job finds them moved on once it has the lease, and leaves them."""
    import benchmark.train as train_module

    config = _write_grid(tmp_path / "g.toml", tiny_dataset)
    out = tmp_path / "runs"
    real, seen = train_module.dispatch, {}

    def twice(jobs, *args):
        first = real(jobs, *args)
        seen["models"] = {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")}
        seen["second"] = real(jobs, *args)               # the same, now out-of-date, plan
        return first + seen["second"]

    monkeypatch.setattr(train_module, "dispatch", twice)
    assert main(["train", str(config), "--out", str(out)]) == 1
    assert {status for _, status in seen["second"]} == {"stale"}
    assert seen["models"] == {p: p.stat().st_mtime_ns for p in out.glob("*/model.pt")}
    assert set(_statuses(out).values()) == {"done"}
    assert "4 run(s) left alone" in capsys.readouterr().err


def test_runs_another_process_is_training_are_left_alone(tiny_dataset, tmp_path, capsys):
    """A run leased by someone else (say a Dask task still running after its client died)
    is not touched: its job reports busy and writes nothing; once the lease is free, a
    re-run trains everything."""
    from benchmark.runner import LEASE
    from rdbench.io import exclusive_lock

    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[1.0], seeds=[0],
                         splits=["random", "checkerboard"])
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    first = sorted(runs_io.find_runs(out))
    for d in first:                        # start over with both runs pending
        for name in ("model.pt", "history.csv"):
            (d / name).unlink()
        runs_io.write_status(d, "pending", 0)
    held = first[0]
    capsys.readouterr()
    with exclusive_lock(held / LEASE) as mine:
        assert mine
        assert main(["train", str(config), "--out", str(out)]) == 1   # incomplete
        err = capsys.readouterr().err
        assert "1 run(s) left alone" in err and "done 1" in err
        assert runs_io.read_status(held)["status"] == "pending"
        assert not (held / "model.pt").exists() and not (held / "history.csv").exists()
        assert runs_io.read_status(first[1])["status"] == "done"
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert set(_statuses(out).values()) == {"done"}


# --- trust: failed writes, read-only or misplaced runs directories, foreign run files --------


def _as_if_not_root(monkeypatch) -> None:
    """Root may write anywhere, so os.access always says yes to root: answer by the owner's
    write bit instead, as for the user who made a directory read-only."""
    if os.geteuid() != 0:
        return
    access = os.access

    def by_mode(path, mode, *args, **kwargs):
        if mode & os.W_OK and not os.stat(path).st_mode & 0o200:
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", by_mode)


def _error_line(err: str) -> str:
    """The last line on stderr, which must be the error (no traceback before or after)."""
    assert "Traceback" not in err and "Warning" not in err, err
    return err.replace("\r", "\n").strip().splitlines()[-1]


@pytest.mark.usefixtures("one_thread")
def test_a_full_disk_ends_the_grid_with_one_line_saying_what_was_kept(
        tiny_dataset, tmp_path, monkeypatch, capsys):
    """ENOSPC on the second job's model.pt: one line naming the file (exit status 1, as
    every command on a full disk), the first run finished, the second keeps its checkpoint;
    the next run of the grid finishes it."""
    import errno

    _narrow_layers(monkeypatch)
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, splits=["random", "checkerboard"],
                         betas=[1.0], seeds=[0], iterations=4, checkpoint_every=2, log_every=2)
    out, save, models_written = tmp_path / "runs", runs_io.atomic_torch_save, []

    def disk_fills(path, obj):
        if Path(path).name == "model.pt":
            models_written.append(Path(path).parent)
            if len(models_written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return save(path, obj)

    monkeypatch.setattr(runs_io, "atomic_torch_save", disk_fills)
    assert main(["train", str(config), "--out", str(out)]) == 1
    second = models_written[1]
    assert _error_line(capsys.readouterr().err) == (
        f"rdbench: error: no space left on device while writing {second / 'model.pt'}; kept: "
        "1 of 2 runs finished, 1 more with a checkpoint to resume from when the grid runs "
        "again")
    assert runs_io.read_status(models_written[0])["status"] == "done"
    assert (second / "checkpoint.pt").exists() and not (second / "model.pt").exists()
    monkeypatch.setattr(runs_io, "atomic_torch_save", save)
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert set(_statuses(out).values()) == {"done"}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX resource limits")
def test_a_write_failing_in_a_loky_worker_is_one_line(tiny_dataset, tmp_path):
    """A 2 MB file size limit (inherited by the workers): the first checkpoint (~19 MB) stops
    short in a worker (EFBIG, which torch.save reports as a RuntimeError); the error crosses
    to the parent and ends the grid as one line."""
    import resource

    config = _write_grid(tmp_path / "g.toml", tiny_dataset, splits=["random", "checkerboard"],
                         betas=[1.0], seeds=[0], iterations=4, checkpoint_every=2, log_every=2)
    out = tmp_path / "runs"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    done = subprocess.run([sys.executable, "-m", "rdbench", "train", str(config), "--out",
                           str(out), "--workers", "2"], preexec_fn=small_files, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True)
    line = _error_line(done.stderr)
    assert done.returncode == 2 and line.startswith(f"rdbench: error: cannot write {out}/"), line
    assert line.endswith("checkpoint.pt (run " + line.split("(run ")[1].split(")")[0] + "): "
                         "File too large; kept: 0 of 2 runs finished, 0 more with a checkpoint "
                         "to resume from when the grid runs again"), line


def _one_trained_run(dataset: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(grid, runs directory, run directory) of one β-VAE trained for 2 iterations."""
    config = _write_grid(tmp_path / "g.toml", dataset, betas=[1.0], seeds=[0],
                         iterations=2, log_every=1, checkpoint_every=2)
    out = tmp_path / "runs"
    assert main(["train", str(config), "--out", str(out)]) == 0
    (run_dir,) = runs_io.find_runs(out)
    return config, out, run_dir


def test_a_read_only_runs_directory_is_refused_before_any_work(tiny_dataset, tmp_path,
                                                               monkeypatch, capsys):
    config = _write_grid(tmp_path / "g.toml", tiny_dataset, betas=[1.0], seeds=[0],
                         iterations=2, log_every=1, checkpoint_every=2)
    out, parent = tmp_path / "runs", tmp_path / "locked"
    assert main(["train", str(config), "--out", str(out)]) == 0
    (run_dir,) = runs_io.find_runs(out)
    runs_io.write_status(run_dir, "pending", 0)  # something left to train
    parent.mkdir()
    _as_if_not_root(monkeypatch)
    for locked, where in ((out, out), (parent, parent / "new" / "runs")):
        before = sorted(p.name for p in locked.iterdir())
        locked.chmod(0o555)
        try:
            for dry in ([], ["--dry-run"]):
                capsys.readouterr()
                assert main(["train", str(config), "--out", str(where), *dry]) == 2
                err = capsys.readouterr().err
                assert err == f"rdbench: error: output directory is not writable: {locked}\n"
        finally:
            locked.chmod(0o755)
        assert sorted(p.name for p in locked.iterdir()) == before


def test_a_runs_directory_inside_another_output_is_refused(tiny_dataset, tmp_path, capsys):
    """Inside a dataset never (it must stay as its manifest lists it); inside a report or
    kp output only with --force."""
    import shutil

    from rdbench.io import MARKER

    data = tmp_path / "data"  # a copy: the test writes into it if the check is broken
    shutil.copytree(tiny_dataset, data)
    config = _write_grid(tmp_path / "g.toml", data, betas=[1.0], seeds=[0],
                         iterations=2, log_every=1, checkpoint_every=2)
    inside = data / "splits" / "myruns"
    for force in ([], ["--force"]):
        assert main(["train", str(config), "--out", str(inside), *force]) == 2
        assert _error_line(capsys.readouterr().err) == (
            f"rdbench: error: output {inside} would be inside the rdbench dataset {data}, "
            "which must stay as generated (its manifest lists every file); choose another --out")
    assert not inside.exists()
    report = tmp_path / "report"
    report.mkdir()
    (report / MARKER).write_text(json.dumps({"kind": "report", "entries": [], "files": []}))
    assert main(["train", str(config), "--out", str(report / "runs")]) == 2
    assert "inside the rdbench report directory" in capsys.readouterr().err
    assert not (report / "runs").exists()
    assert main(["train", str(config), "--out", str(report / "runs"), "--force"]) == 0


def test_a_run_directory_that_is_a_file_or_a_link_is_refused_before_any_work(
        tiny_dataset, tmp_path, capsys):
    config, out, run_dir = _one_trained_run(tiny_dataset, tmp_path)
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    run_dir.write_text("mine")
    for dry in ([], ["--dry-run"]):
        capsys.readouterr()
        assert main(["train", str(config), "--out", str(out), *dry]) == 2
        assert _error_line(capsys.readouterr().err) == (
            f"rdbench: error: {run_dir} is not a directory, and rdbench train writes into a "
            "directory of that name: move it away")
    assert run_dir.read_text() == "mine"
    run_dir.unlink()
    run_dir.symlink_to(moved, target_is_directory=True)
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert _error_line(capsys.readouterr().err) == (
        f"rdbench: error: run directory {run_dir} is a symbolic link; rdbench writes runs "
        "only inside the runs directory: remove the link")


def test_read_only_run_files_and_directories(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A read-only status.json is replaced like any run file (a rename needs only the
    directory); a read-only run directory is refused before any work."""
    config, out, run_dir = _one_trained_run(tiny_dataset, tmp_path)
    (run_dir / "model.pt").unlink()
    runs_io.write_status(run_dir, "pending", 0)
    (run_dir / "status.json").chmod(0o444)
    assert main(["train", str(config), "--out", str(out)]) == 0
    assert runs_io.read_status(run_dir)["status"] == "done"
    (run_dir / "model.pt").unlink()
    runs_io.write_status(run_dir, "pending", 0)
    _as_if_not_root(monkeypatch)
    run_dir.chmod(0o555)
    try:
        capsys.readouterr()
        assert main(["train", str(config), "--out", str(out)]) == 2
        assert _error_line(capsys.readouterr().err) == (
            f"rdbench: error: output directory is not writable: {run_dir}")
    finally:
        run_dir.chmod(0o755)
    assert runs_io.read_status(run_dir)["status"] == "pending"


def test_a_checkpoint_of_another_shape_stops_the_resume_with_one_line(tiny_dataset, tmp_path,
                                                                      capsys):
    config, out, run_dir = _one_trained_run(tiny_dataset, tmp_path)
    (run_dir / "model.pt").unlink()
    runs_io.write_status(run_dir, "running", 2)
    torch.save({"encoder.1.weight": torch.zeros(2)}, run_dir / "checkpoint.pt")  # a state dict
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert _error_line(capsys.readouterr().err) == (
        f"rdbench: error: unreadable checkpoint {run_dir / 'checkpoint.pt'} (not a checkpoint: "
        "expected a dict with iteration, model and optimizer); restore it, or delete it to "
        "resume from an earlier checkpoint or the start")


def test_dry_run_flops_are_extrapolated_from_small_batches(monkeypatch):
    """A step's FLOPs are quadratic in the batch: counted at 2..5, never at the full batch
    (whose memory the dry run must not need), unless the fourth point breaks the fit."""
    from benchmark import train as train_module
    from benchmark.trainer import GroupSpec

    spec = GroupSpec("mlp1", "beta_vae", {}, (1.0,), (0,), 10, 65_536, 1e-3, 1, 1,
                     latent_dim=2)
    quadratic, cubic = (lambda b: 7 + 5 * b + 3 * b * b), (lambda b: b ** 3)
    for flops, counted in ((quadratic, [2, 3, 4, 5]), (cubic, [2, 3, 4, 5, 65_536])):
        seen: list[int] = []
        monkeypatch.setattr(train_module, "_count_flops", lambda model, *args, f=flops, s=seen:
                            s.append(args[-1]) or f(args[-1]))
        assert train_module._flops_per_iteration(spec) == flops(65_536)
        assert seen == counted


@pytest.mark.usefixtures("one_thread")
def test_extrapolated_flops_equal_torchs_count_at_the_full_batch():
    """For the minibatch estimators' B × B terms (no_mi), a per-example objective, and a
    model of another image shape and likelihood."""
    from benchmark import train as train_module
    from benchmark.trainer import GroupSpec, init_model

    for objective, shape, likelihood, std in (("no_mi", (3, 32, 32), "bernoulli", None),
                                              ("beta_vae", (3, 32, 32), "bernoulli", None),
                                              ("beta_vae", (1, 12, 10), "gaussian", 0.1)):
        spec = GroupSpec("mlp1", objective, {}, (1.0,), (0,), 10, 37, 1e-3, 1, 1,
                         latent_dim=3, image_shape=shape, likelihood=likelihood,
                         decoder_std=std)
        options = {"dataset_size": 37}
        direct = train_module._count_flops(init_model(spec, 0), objective, options, 3, shape,
                                           37)
        assert train_module._flops_per_iteration(spec) == direct
