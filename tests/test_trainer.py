"""The vectorised trainer: a group equals its runs trained alone; failures; exact resume."""

import io

import numpy as np
import pytest
import torch

from benchmark import models, trainer
from benchmark.trainer import GroupSpec, RunState, init_model, train_group

pytestmark = pytest.mark.usefixtures("one_thread")


# Narrow layers (same code paths, ~100x fewer FLOPs) so the tests fit 2 shared cores.
TINY_LAYERS = {"mlp": {"hidden": 32}, "cnn": {"channels": 8}}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)


def _spec(arch, betas, seeds, iterations=20, **kw):
    kw = {"log_every": 5, "checkpoint_every": 10,
          "architecture_options": TINY_LAYERS[arch[:3]], **kw}
    return GroupSpec(arch, "beta_vae", {}, tuple(betas), tuple(seeds), iterations, 8, 1e-3, **kw)


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda,
           pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
)
DEVICES = ["cpu", CUDA]  # on CUDA, groups of CNNs take the vmap path (grouped convolutions)


def _train(spec, images, device="cpu", **kw):
    return train_group(spec, images, device=device, progress=False, **kw)


def _assert_same_models(a: RunState, b: RunState, atol=1e-5):
    """Equal to float tolerance: all but 1 in 10,000 elements within ``atol``, all within 1e-4.

    The few allowed outliers are Adam's: an element whose gradient is at rounding level
    (a ReLU pre-activation within rounding of 0, say) moves by lr·|g|/(|g| + 1e-8), so a
    rounding difference of ~1e-9 between two summation orders becomes a step difference
    of up to ~1e-4 at lr = 1e-3. A run mixed up with another differs almost everywhere.
    """
    assert a.model.keys() == b.model.keys()
    for k in a.model:
        torch.testing.assert_close(a.model[k], b.model[k], atol=1e-4, rtol=1e-4)
        off = ((a.model[k] - b.model[k]).abs() > atol + 1e-4 * b.model[k].abs()).sum()
        assert int(off) <= a.model[k].numel() // 10_000, f"{k}: {int(off)} elements differ"


@pytest.mark.usefixtures("cuda_reproducible")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])
def test_group_equals_runs_trained_alone(images, arch, device):
    betas, seeds = (0.1, 1.0, 4.0), (3, 7, 11)
    group = _train(_spec(arch, betas, seeds), images, device)
    for r, (beta, seed) in enumerate(zip(betas, seeds, strict=True)):
        solo = _train(_spec(arch, [beta], [seed]), images, device)[0]
        _assert_same_models(group[r], solo)
        assert group[r].failed is None
        for v in group[r].model.values():  # own, contiguous storage: small checkpoints
            assert v.is_contiguous() and v.untyped_storage().nbytes() == v.numel() * 4
    # the runs really trained and differ from each other
    k = "encoder.1.weight" if arch == "mlp1" else "encoder.0.weight"
    assert not torch.equal(group[0].model[k], init_model(_spec(arch, [1], [3]), 3).state_dict()[k])
    assert not torch.allclose(group[0].model[k], group[1].model[k])


@pytest.mark.usefixtures("cuda_reproducible")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])  # the vmap path and the CPU loop path
def test_diverged_run_is_frozen_and_others_unaffected(images, arch, device):
    spec = _spec(arch, (1.0, 1.0, 2.0), (0, 1, 2), iterations=8)
    start = [RunState(0, init_model(spec, s).state_dict(), {}) for s in spec.seeds]
    bad = start[1].model["encoder.3.bias"]
    bad[spec.latent_dim :] = 200.0  # log-variance 200: exp overflows, the rate is inf
    frozen_at = {k: v.clone() for k, v in start[1].model.items()}
    rows = []
    out = _train(spec, images, device, states=start, on_log=lambda it, r: rows.append(r))
    assert out[1].failed == "non-finite loss at iteration 0"
    for k, v in frozen_at.items():
        assert torch.equal(out[1].model[k], v), k  # Adam moved it by exactly 0
        assert not out[1].optimizer["exp_avg"][k].any(), k
    for r in (0, 2):
        assert out[r].failed is None
        solo = _train(_spec(arch, [spec.betas[r]], [r], iterations=8), images, device)[0]
        _assert_same_models(out[r], solo)
    assert np.isnan(rows[0][1]["loss"]) and np.isfinite(rows[0][0]["loss"])


@pytest.mark.usefixtures("cuda_reproducible")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])
def test_run_dying_mid_training_keeps_its_last_weights(images, arch, device):
    """A death after some steps: Adam moments exist then, and must be zeroed too."""
    spec = _spec(arch, (1.0, 1.0, 2.0), (0, 1, 2), iterations=8, checkpoint_every=4)
    saved = []
    _train(spec, images, device, on_checkpoint=saved.append)
    states = saved[0]
    assert states[1].iteration == 4 and states[1].optimizer["exp_avg"]["encoder.3.bias"].any()
    states[1].model["encoder.3.bias"][spec.latent_dim :] = 200.0  # the rate overflows
    frozen_at = {k: v.clone() for k, v in states[1].model.items()}
    out = _train(spec, images, device, states=states)
    assert out[1].failed == "non-finite loss at iteration 4"
    for k, v in frozen_at.items():
        assert torch.equal(out[1].model[k], v), k
        assert not out[1].optimizer["exp_avg"][k].any(), k
        assert not out[1].optimizer["exp_avg_sq"][k].any(), k
    straight = saved[1]  # the uninterrupted run's final states
    for r in (0, 2):
        assert out[r].failed is None
        _assert_same_models(out[r], straight[r])


def test_infinite_beta_fails_only_that_run(images):
    spec = _spec("cnn1", (1.0, float("inf")), (0, 1), iterations=6)
    out = _train(spec, images)
    assert out[1].failed == "non-finite loss at iteration 0"
    assert out[0].failed is None
    _assert_same_models(out[0], _train(_spec("cnn1", [1.0], [0], iterations=6), images)[0])


def _roundtrip(states):
    buf = io.BytesIO()
    torch.save([s.to_dict() for s in states], buf)
    buf.seek(0)
    return [RunState.from_dict(d) for d in torch.load(buf, weights_only=True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp1", "cnn3"])
@pytest.mark.usefixtures("cuda_reproducible")  # on CUDA, one deterministic algorithm each
def test_resume_from_checkpoint_is_exact(images, arch, device, monkeypatch):
    monkeypatch.setattr(trainer, "CHUNK", 4)  # resume mid-chunk, cross chunk boundaries
    spec = _spec(arch, (0.5, 2.0), (5, 6))
    straight = _train(spec, images, device)
    saved = []
    _train(spec, images, device, on_checkpoint=lambda s: saved.append(_roundtrip(s)))
    assert [s[0].iteration for s in saved] == [10, 20]
    resumed = _train(spec, images, device, states=saved[0])
    for a, b in zip(straight, resumed, strict=True):
        assert a.iteration == b.iteration == 20
        for k in a.model:
            assert torch.equal(a.model[k], b.model[k]), k
        for k in a.optimizer["exp_avg"]:
            assert torch.equal(a.optimizer["exp_avg_sq"][k], b.optimizer["exp_avg_sq"][k])



def test_logs_checkpoints_and_state_loads_into_plain_model(images):
    spec = _spec("cnn1", (1.0,), (0,), iterations=12)
    logs, ckpts = [], []
    out = _train(
        spec,
        images,
        on_log=lambda it, r: logs.append((it, r)),
        on_checkpoint=lambda s: ckpts.append(s[0].iteration),
    )
    assert [it for it, _ in logs] == [5, 10, 12]
    assert set(logs[0][1][0]) == {"loss", "distortion", "rate"}
    row = logs[-1][1][0]
    assert row["loss"] == pytest.approx(row["distortion"] + row["rate"], rel=1e-5)
    assert ckpts == [10, 12]
    model = models.build_model("cnn1", options=TINY_LAYERS["cnn"])
    model.load_state_dict(out[0].model)  # same names as a plain single model


def test_resume_rejects_mixed_iterations(images):
    spec = _spec("cnn1", (1.0, 1.0), (0, 1))
    st = [RunState(i, init_model(spec, i).state_dict(), {}) for i in (0, 1)]
    with pytest.raises(ValueError, match="one iteration"):
        _train(spec, images, states=st)


def test_training_leaves_global_backend_flags_as_it_found_them(images, monkeypatch):
    """TF32 / cuDNN autotuning are set for training only: evaluation in the same process
    (``rdbench demo``) must not inherit them. CUDA's setup is imitated on the CPU."""
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    setup = trainer._setup_device

    def as_on_cuda(device):
        for f in flags:
            f.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return setup(device)

    monkeypatch.setattr(trainer, "_setup_device", as_on_cuda)
    saved = [f.allow_tf32 for f in flags], torch.backends.cudnn.benchmark
    try:  # (monkeypatch cannot undo attributes of torch.backends.cuda.matmul)
        for f in flags:
            f.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        _train(_spec("mlp1", (1.0,), (0,), iterations=2), images)
        assert [f.allow_tf32 for f in flags] == [False, False]
        assert torch.backends.cudnn.benchmark is False
    finally:
        for f, value in zip(flags, saved[0], strict=True):
            f.allow_tf32 = value
        torch.backends.cudnn.benchmark = saved[1]


@pytest.mark.parametrize("before", [False, True])
def test_cpu_training_flushes_subnormals_and_restores_the_setting(images, before):
    """Adam moments of always-zero gradients decay into float32's subnormals, which made a
    CPU group several times slower late in training: they are flushed while it trains, and
    the process's own setting (either one) is back afterwards."""
    during = []
    torch.set_flush_denormal(before)
    try:
        assert trainer.flushes_denormals() is before
        _train(_spec("mlp1", (1.0,), (0,), iterations=2), images,
               on_log=lambda it, rows: during.append(trainer.flushes_denormals()))
        assert during and all(during)
        assert trainer.flushes_denormals() is before
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.usefixtures("cuda_reproducible")
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_group_trains_on_cuda(images):
    spec = _spec("cnn3", (0.5, 2.0), (0, 1))
    out = train_group(spec, images, device="cuda", progress=False)
    assert all(s.failed is None for s in out)
    assert all(v.device.type == "cpu" for v in out[0].model.values())
    solo = train_group(_spec("cnn3", (0.5,), (0,)), images, device="cuda", progress=False)
    _assert_same_models(out[0], solo[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda(images):
    spec = _spec("mlp1", (0.5, 2.0), (0, 1), precision="bf16")
    out = train_group(spec, images, device="cuda", progress=False)
    assert all(s.failed is None for s in out)
    assert all(v.dtype == torch.float32 for v in out[0].model.values())  # fp32 master weights


def test_cnn_vmap_path_equals_runs_trained_alone(images, monkeypatch):
    """CNN groups on CPU loop over the models; the vmap path (used on CUDA) must agree too."""
    loop = trainer._uses_loop
    cnn, mlp = models.build_model("cnn1"), models.build_model("mlp1")
    assert loop(cnn, torch.device("cpu"))
    assert not loop(mlp, torch.device("cpu"))
    assert not loop(cnn, torch.device("meta"))
    betas, seeds = (0.1, 4.0), (3, 11)
    solo = [_train(_spec("cnn3", [b], [s]), images)[0] for b, s in zip(betas, seeds, strict=True)]
    monkeypatch.setattr(trainer, "_uses_loop", lambda meta, device: False)
    group = _train(_spec("cnn3", betas, seeds), images)
    for a, b in zip(group, solo, strict=True):
        _assert_same_models(a, b)




@pytest.mark.parametrize("n", [8, 5])  # redraws (B ≤ n/2), a random permutation (B > n/2)
def test_minibatches_are_uniform_subsets_of_distinct_examples(n):
    """Known answer: each of the C(n, 3) subsets of range(n) has probability 1/C(n, 3)."""
    from itertools import combinations

    subsets = list(combinations(range(n), 3))
    expected = 1000
    g = torch.Generator().manual_seed(0)
    rows = trainer.distinct_rows(torch.randint(n, (expected * len(subsets), 3), generator=g),
                                 n, g)
    counts = dict.fromkeys(subsets, 0)
    for row in rows.tolist():
        counts[tuple(sorted(row))] += 1  # KeyError on a repeat
    # binomial(1000·C, 1/C): sd < 32; 6 sd (a fixed seed, so this is not a flaky test)
    assert all(abs(c - expected) < 6 * 32 for c in counts.values()), counts
    with pytest.raises(ValueError, match="cannot draw 6 distinct examples from 5"):
        trainer.distinct_rows(torch.zeros(1, 6, dtype=torch.int64), 5, g)


def test_training_minibatches_hold_distinct_examples():
    idx, eps, u = trainer.draw_chunk(3, 0, 40, 32, 10, torch.device("cpu"))
    assert idx.shape == (trainer.CHUNK, 32) and eps.shape == (trainer.CHUNK, 32, 10)
    assert all(len(set(row)) == 32 for row in idx.tolist())
    assert int(idx.min()) >= 0 and int(idx.max()) < 40
