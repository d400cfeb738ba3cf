"""``rdbench bench train``: known answers of its arithmetic, input checks, tiny timers."""

import argparse
import json

import numpy as np
import pytest
import torch

from benchmark import bench, models
from rdbench.io import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def tiny_layers(monkeypatch):
    monkeypatch.setattr(models, "_HIDDEN", 32)
    monkeypatch.setattr(models, "_CHANNELS", 8)


def _row(arch="mlp1", models=60, its=1.0, batch=bench.BATCH):
    return {"architecture": arch, "models": models, "vectorised_its": its, "loop_its": its / 2,
            "speedup": 2.0, "batch": batch, "flops_per_model_it": 1e9,
            "param_bytes_per_model_it": 1e9}


def test_projection_known_answers():
    # 12 β × 5 seeds × 257,000 iterations × 19 splits
    assert bench.PAPER_MODEL_ITERATIONS == 292_980_000
    rows = [_row(models=4, its=1.0), _row(models=60, its=bench.PAPER_MODEL_ITERATIONS / 3600)]
    proj = bench.projection(rows)
    assert proj["hours"] == {"mlp1": pytest.approx(1.0)}  # the largest group is used
    assert bench.projection([_row(batch=1024)]) is None  # the paper grid is at batch 128
    assert bench._betas(3) == pytest.approx((0.01, (0.01 * 3) ** 0.5, 3.0))


def test_roofline_known_answers():
    # 1 GFLOP moving 1 GB: at 1 TFLOP/s and 100 GB/s the bytes take 10 ms, so 10 % of peak
    assert bench.mfu_ceiling(1e9, 1e9, 1e12, 1e11) == pytest.approx(0.1)
    assert bench.mfu_ceiling(1e9, 1e6, 1e12, 1e11) == pytest.approx(1.0)  # compute-bound
    row = bench.add_ratios(_row(its=50.0), peak=1e12, bandwidth=1e11)
    # 50 model-it/s × 1 GFLOP = 0.05 TFLOP/s = 5 % of the peak, half of the 10 % ceiling
    assert row["vectorised_tflops"] == pytest.approx(0.05)
    assert row["vectorised_mfu"] == pytest.approx(0.05)
    assert row["loop_mfu"] == pytest.approx(0.025)
    assert row["mfu_ceiling"] == pytest.approx(0.1)


def test_markdown_table():
    rows = [bench.add_ratios(_row(its=50.0), 1e12, 1e11)]
    result = {"device_name": "Test GPU", "peak_tflops": 1.0, "bandwidth_gbs": 100.0,
              "rows": rows, "projection": bench.projection(rows)}
    text = bench.markdown(result)
    assert "Test GPU; peak dense matmul 1.00 TFLOP/s, copy bandwidth 100 GB/s; batch 128" in text
    assert "| mlp1 | 60 | 50.0 | 25.0 | 2.00× | 0.050 | 5.0 % | 10 % |" in text
    hours = bench.PAPER_MODEL_ITERATIONS / 50 / 3600
    assert f"mlp1 {hours:,.0f} h" in text
    result["projection"] = None
    assert "No paper grid projection" in bench.markdown(result)


def test_rejects_bad_arguments():
    def ns(**kw):
        return argparse.Namespace(**{"architectures": ["mlp1"], "models": None, "steps": None,
                                     "out": None, "batch": 128, **kw})

    with pytest.raises(InputError, match="cnn9"):
        bench._validate(ns(architectures=["cnn9"]))
    with pytest.raises(InputError, match="models"):
        bench._validate(ns(models=[0]))
    for batch in (0, bench.BENCH_IMAGES + 1):  # distinct examples: at most the bench's images
        with pytest.raises(InputError, match="batch"):
            bench._validate(ns(batch=batch))
    bench._validate(ns(batch=bench.BENCH_IMAGES))


def test_timers_and_copy_bandwidth_run_tiny():
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    assert bench.time_vectorised("cnn1", 2, 2, 1, images, cpu, batch=8) > 0
    assert bench.time_loop("cnn1", 2, 2, 1, images, cpu, batch=8) > 0
    assert bench.copy_bandwidth(cpu, n_bytes=1 << 20, repeats=2) > 0


# ---------------------------------------------------------------- --out of every bench
class MeasuringError(Exception):
    """Raised in place of the measurements: the command got past its input checks (not an error)."""


def _no_measuring(*args, **kwargs):
    raise MeasuringError


@pytest.fixture
def benches(monkeypatch):
    """``rdbench bench WHAT`` with its first measurement replaced by :class:`MeasuringError`."""
    import analysis.bench
    import tetrominoes.bench

    monkeypatch.setattr(bench, "matmul_peak", _no_measuring)
    monkeypatch.setattr(analysis.bench, "bench_rate_decomposition", _no_measuring)
    monkeypatch.setattr(tetrominoes.bench, "run", _no_measuring)
    return {"train": ["--device", "cpu"], "eval": ["--device", "cpu"], "data": []}


@pytest.mark.parametrize("what", ["train", "eval", "data"])
def test_bench_out_is_checked_before_measuring(benches, what, tmp_path, capsys):
    from rdbench.cli import main

    user = tmp_path / "user.json"
    user.write_text('{"mine": 1}')
    for out in (user, tmp_path, user / "x.json"):
        assert main(["bench", what, *benches[what], "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rdbench: error:") and err.count("\n") == 1
    assert user.read_text() == '{"mine": 1}'
    with pytest.raises(MeasuringError):  # --force replaces any file
        main(["bench", what, *benches[what], "--out", str(user), "--force"])
    earlier = tmp_path / "results" / f"{what}.json"  # a re-run into the same path
    earlier.parent.mkdir()
    earlier.write_text(json.dumps({"bench": what}))
    with pytest.raises(MeasuringError):
        main(["bench", what, *benches[what], "--out", str(earlier)])


def test_bench_eval_validates_the_device_as_every_command(capsys):
    from rdbench.cli import main

    assert main(["bench", "eval", "--device", "tpu"]) == 2
    assert "invalid device 'tpu'" in capsys.readouterr().err
