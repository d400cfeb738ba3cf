"""Validation sets, early stopping, model_best.pt and TensorBoard through ``rdbench train``
(SPEC §11); the trainer-level properties are in tests/test_validation.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import imagesets
from benchmark import runs as runs_io
from benchmark.runner import training_images
from imagesets.splits import hold_out
from rdbench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_grid(path, dataset, **extra) -> None:
    lines = [f'dataset = "{dataset}"', 'name = "es"', 'splits = ["random"]',
             'architectures = ["mlp1"]', "betas = [0.5, 4.0]", "seeds = [0]",
             "iterations = 24", "batch_size = 16", "log_every = 4", "checkpoint_every = 8",
             'device = "cpu"', "validation = 40", "learning_rate = 0.005",
             *(f"{k} = {v}" for k, v in extra.items()),
             "[architecture_options]", "hidden = 16"]
    path.write_text("\n".join(lines) + "\n")


def test_held_out_rows_are_never_trained_on(tiny_dataset):
    data = imagesets.load(tiny_dataset)
    train = data.split("random").train
    rest, held = hold_out(train, 40, ("validation", "random", 40))
    assert len(held) == 40 and not set(rest) & set(held) and set(rest) | set(held) == set(train)
    images, validation = training_images(str(tiny_dataset), "random", 40)
    np.testing.assert_array_equal(images, data.images[rest])  # the only images sampled from
    np.testing.assert_array_equal(validation, data.images[held])
    again = hold_out(train, 40, ("validation", "random", 40))[1]
    np.testing.assert_array_equal(held, again)  # the same rows for every run of the split


def test_train_with_validation_patience_and_tensorboard(tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write_grid(tmp_path / "grid.toml", tiny_dataset, patience=2, tensorboard="true")
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(runs)]) == 0
    run_dirs = runs_io.find_runs(runs)
    assert len(run_dirs) == 2
    for run in run_dirs:
        status = runs_io.read_status(run)
        assert status["status"] == "done" and 0 < status["best_iteration"] <= 24
        history = runs_io.read_history(run)
        logged = {r["iteration"]: r["val_loss"] for r in history if np.isfinite(r["val_loss"])}
        assert min(logged, key=logged.get) == status["best_iteration"]
        assert status["best_validation_loss"] == pytest.approx(min(logged.values()))
        best = torch.load(run / "model_best.pt", weights_only=True)
        model = runs_io.load_model(run, checkpoint="best")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        assert {"train/loss", "validation/loss"} <= set(events.Tags()["scalars"])
        scalars = events.Scalars("validation/loss")
        assert [e.step for e in scalars] == sorted(logged)
        assert [e.value for e in scalars] == pytest.approx([logged[k] for k in sorted(logged)],
                                                           rel=1e-6)


def test_a_resumed_grid_keeps_the_best_so_far(tiny_dataset, tmp_path, monkeypatch):
    """A kill after the first checkpoint (iteration 8): the resumed runs end with the
    model_best.pt and best iteration of an uninterrupted grid."""
    _write_grid(tmp_path / "grid.toml", tiny_dataset)
    straight = tmp_path / "straight"
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(straight)]) == 0
    save = runs_io.save_checkpoint

    def save_then_die(run_dir, state, history, group=()):
        save(run_dir, state, history, group)
        if state.iteration == 8 and run_dir.name == group[-1]:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs_io, "save_checkpoint", save_then_die)
    killed = tmp_path / "killed"
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(killed)]) == 130
    monkeypatch.setattr(runs_io, "save_checkpoint", save)
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(killed)]) == 0
    for run in runs_io.find_runs(straight):
        other = killed / run.name
        assert runs_io.read_status(other)["best_iteration"] == \
            runs_io.read_status(run)["best_iteration"]
        a = torch.load(run / "model_best.pt", weights_only=True)
        b = torch.load(other / "model_best.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_best_checkpoints_are_evaluated_apart_and_reported_beside_the_final(tiny_dataset,
                                                                            tmp_path):
    """evaluate --checkpoint final best writes metrics.json and metrics_best.json (the best
    checkpoint's own numbers); the report draws the early-stopped curves and the curves."""
    _write_grid(tmp_path / "grid.toml", tiny_dataset, validate_every=8)
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(runs)]) == 0
    assert main(["evaluate", str(runs), "--checkpoint", "final", "best", "--iwae-samples", "4",
                 "--iwae-subset", "8", "--nn-subset", "20", "--max-examples", "64"]) == 0
    for run in runs_io.find_runs(runs):
        final = json.loads((run / "metrics.json").read_text())
        best = json.loads((run / "metrics_best.json").read_text())
        assert (final["checkpoint"], best["checkpoint"]) == ("final", "best")
        same_weights = runs_io.read_status(run)["best_iteration"] == 24
        assert (final["test"]["distortion"] == best["test"]["distortion"]) == same_weights
    assert main(["report", str(runs)]) == 0
    report = runs / "report"
    assert (report / "figures" / "rd_early_stopping_random_mlp1.png").is_file()
    assert (report / "figures" / "curves_random_mlp1_beta_vae.png").is_file()
    assert {"runs_best.csv", "summary_best.csv", "history.csv", "stopping.csv"} <= {
        p.name for p in report.iterdir()}
    assert "best checkpoint (iteration)" in (report / "report.md").read_text()


def test_the_train_set_evaluated_is_the_rows_trained_on(tiny_dataset, tmp_path, capsys):
    """A run's train metrics are over the rows it trained on, never its held-out validation
    rows (set_size = n_train = the split's training set less them); metrics of a version that
    took the whole split are evaluated again."""
    _write_grid(tmp_path / "grid.toml", tiny_dataset)
    runs = tmp_path / "runs"
    assert main(["train", str(tmp_path / "grid.toml"), "--out", str(runs)]) == 0
    evaluate = ["evaluate", str(runs), "--iwae-samples", "4", "--iwae-subset", "8",
                "--nn-subset", "20"]
    assert main(evaluate) == 0
    whole = len(imagesets.load(tiny_dataset).split("random").train)
    for run in runs_io.find_runs(runs):
        config = json.loads((run / "config.json").read_text())
        train = json.loads((run / "metrics.json").read_text())["train"]
        assert train["set_size"] == train["n"] == config["n_train"] == whole - 40
    run = runs_io.find_runs(runs)[0]
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["settings"]["train_set"]  # as an earlier version wrote it
    metrics["train"]["set_size"] = whole
    (run / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert main(evaluate) == 0
    assert "evaluated 1 run(s)" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["train"]["set_size"] == whole - 40
