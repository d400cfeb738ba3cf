"""Validation and early stopping in the trainer (SPEC §11): best weights, patience, resume."""

import math

import numpy as np
import pytest
import torch

from benchmark.trainer import GroupSpec, RunState, train_group

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"mlp": {"hidden": 16}, "cnn": {"channels": 4}, "kp-": {"width": 0.05}}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 16, 16, 1), dtype=np.uint8)
    return images[:40], images[40:]  # train, validation


def _spec(arch="mlp1", betas=(0.5, 2.0, 8.0), seeds=(0, 1, 2), iterations=12, **kw):
    kw = {"log_every": 2, "checkpoint_every": 4, "validate_every": 2,
          "architecture_options": TINY[arch[:3]], "image_shape": (1, 16, 16),
          "latent_dim": 3, **kw}
    return GroupSpec(arch, "beta_vae", {}, tuple(betas), tuple(seeds), iterations, 8, 5e-3, **kw)


def _train(spec, data, **kw):
    return train_group(spec, data[0], validation=data[1], device="cpu", progress=False, **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])
def test_best_weights_are_the_weights_at_the_logged_best_iteration(data, arch):
    spec = _spec(arch, checkpoint_every=2)
    rows, saved = [], {}
    final = _train(spec, data, on_log=lambda it, r: rows.append((it, r)),
                   on_checkpoint=lambda states: saved.update({states[0].iteration: states}))
    for r, state in enumerate(final):
        logged = {it: row[r]["val_loss"] for it, row in rows}
        assert all(math.isfinite(v) for v in logged.values())  # every log row validated here
        best_it = min(logged, key=lambda it: (logged[it], it))
        assert state.best["iteration"] == best_it
        assert state.best["value"] == pytest.approx(logged[best_it], rel=1e-12)
        assert _same(state.best["model"], saved[best_it][r].model)


def test_validation_columns_are_nan_where_a_row_has_no_validation(data):
    rows = []
    _train(_spec(validate_every=4, iterations=8), data, on_log=lambda it, r: rows.append((it, r)))
    assert [it for it, _ in rows] == [2, 4, 6, 8]
    for it, row in rows:
        assert set(row[0]) == {"loss", "distortion", "rate", "val_loss", "val_distortion",
                               "val_rate"}
        assert math.isnan(row[0]["val_loss"]) == (it % 4 != 0)


def test_a_stopped_run_freezes_and_its_group_mates_end_as_if_it_had_not_stopped(data):
    """patience = 1 stops a run at its first validation without improvement: here two of the
    three runs stop (at 20 and 26 of 30 iterations) and one trains to the end."""
    spec = _spec(iterations=30, patience=1, checkpoint_every=2)
    saved = {}
    stopped = _train(spec, data, on_checkpoint=lambda s: saved.update({s[0].iteration: s}))
    free = _train(_spec(iterations=30, checkpoint_every=2), data)
    assert sum(s.stopped is not None for s in stopped) == 2
    for r, (a, b) in enumerate(zip(stopped, free, strict=True)):
        assert a.failed is None
        if a.stopped is None:
            assert _same(a.model, b.model)  # unaffected by the stopped runs
        else:
            assert a.stopped % spec.validate_every == 0 and a.stopped > a.best["iteration"]
            assert _same(a.model, saved[a.stopped][r].model)  # frozen where it stopped
            assert not a.optimizer["exp_avg"]["encoder.1.weight"].any()


def test_stopped_runs_keep_their_batchnorm_statistics(data):
    """Both runs stop (at 10 and 14 of 20); their BatchNorm running means and batch counts
    must not move with the forward passes their group still makes after that."""
    spec = _spec("kp-mnist", betas=(0.5, 2.0), seeds=(0, 1), iterations=20, patience=1,
                 checkpoint_every=2)
    saved = {}
    out = _train(spec, data, on_checkpoint=lambda s: saved.update({s[0].iteration: s}))
    assert all(s.stopped is not None and s.stopped < 20 for s in out)
    for r, state in enumerate(out):
        frozen = saved[state.stopped][r].model
        assert any("running_mean" in k for k in frozen)
        assert _same(state.model, frozen)  # running means and counts included


@pytest.mark.parametrize("patience", [None, 2])
def test_resume_keeps_the_best_so_far_and_the_patience_count(data, patience):
    spec = _spec(iterations=12, patience=patience)
    straight = _train(spec, data)
    saved = []
    _train(spec, data, on_checkpoint=saved.append)
    first = [RunState.from_dict(s.to_dict()) for s in saved[0]]  # iteration 4
    resumed = _train(spec, data, states=first)
    for a, b in zip(straight, resumed, strict=True):
        assert (a.best["iteration"], a.best["value"], a.stopped, a.bad_validations) == \
            (b.best["iteration"], b.best["value"], b.stopped, b.bad_validations)
        assert _same(a.best["model"], b.best["model"]) and _same(a.model, b.model)
