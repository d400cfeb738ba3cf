"""``rdbench bench train``: known answers of its arithmetic, input checks, tiny timers."""

import argparse
import json

import numpy as np
import pytest
import torch

from benchmark import bench, bench_table
from rdbench.io import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"hidden": 32, "channels": 8, "width": 0.05}  # bench.QUICK_OPTIONS


def _row(arch="mlp1", models=60, its=1.0, batch=bench.BATCH, case="paper",
         shape=(3, 32, 32), likelihood="bernoulli", std=None, options=None):
    return {"case": case, "architecture": arch, "image_shape": list(shape),
            "likelihood": likelihood, "decoder_std": std, "architecture_options": options or {},
            "models": models, "vectorised_its": its, "loop_its": its / 2, "speedup": 2.0,
            "batch": batch, "flops_per_model_it": 1e9, "param_bytes_per_model_it": 1e9}


def _args(**kw):
    return argparse.Namespace(**{"architectures": None, "cases": ["all"], "models": None,
                                 "steps": None, "out": None, "batch": 128, "quick": False, **kw})


def test_projection_known_answers():
    # 12 β × 5 seeds × 257,000 iterations × 19 splits
    assert bench.PAPER_MODEL_ITERATIONS == 292_980_000
    rows = [_row(models=4, its=1.0), _row(models=60, its=bench.PAPER_MODEL_ITERATIONS / 3600),
            # other cases of the same network never enter the paper grid's projection
            _row(models=100, its=1.0, case="likelihoods", likelihood="gaussian", std=0.1),
            _row("cnn1", models=60, its=1.0, case="shapes", shape=(1, 28, 28))]
    proj = bench_table.projection(rows)
    assert proj["hours"] == {"mlp1": pytest.approx(1.0)}  # the largest paper group is used
    assert bench_table.projection([_row(batch=1024)]) is None  # the paper grid is at batch 128
    assert bench_table.projection(rows[2:]) is None  # no paper rows
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
    rows = [bench.add_ratios(r, 1e12, 1e11) for r in (
        _row(its=50.0),
        _row("kp-mnist", 4, 0.25, case="likelihoods", shape=(1, 28, 28), likelihood="gaussian",
             std="learned", options={"width": 0.05}),
        _row(models=4, its=50.0, case="likelihoods", likelihood="gaussian", std=0.1))]
    result = {"device_name": "Test GPU", "peak_tflops": 1.0, "bandwidth_gbs": 100.0,
              "rows": rows, "projection": bench_table.projection(rows)}
    text = bench_table.markdown(result)
    assert "Test GPU; peak dense matmul 1.00 TFLOP/s, copy bandwidth 100 GB/s; batch 128" in text
    row = "| mlp1 | 3×32×32 | bernoulli | 60 | 50.0 | 25.0 | 2.00× | 0.050 | 5.0 % | 10 % |"
    assert row in text
    assert "| kp-mnist width=0.05 | 1×28×28 | gaussian σ learned | 4 | 0.250 | 0.125 |" in text
    assert "| mlp1 | 3×32×32 | gaussian σ=0.1 | 4 |" in text
    hours = bench.PAPER_MODEL_ITERATIONS / 50 / 3600
    assert f"mlp1 {hours:,.0f} h; total {hours:,.0f} h" in text  # the paper row only
    result["projection"] = None
    assert "No paper grid projection" in bench_table.markdown(result)


def test_case_sets_and_quick_narrowing():
    everything = bench.select_cases(_args())
    assert everything == list(bench.CASES) and len(everything) == 10
    paper = bench.select_cases(_args(cases=["paper"]))
    assert [(c.architecture, c.image_shape, c.likelihood) for c in paper] == [
        (a, (3, 32, 32), "bernoulli") for a in ("mlp1", "mlp3", "cnn1", "cnn3")]
    shapes = bench.select_cases(_args(cases=["shapes"], architectures=["cnn1"]))
    assert [c.image_shape for c in shapes] == [(1, 28, 28), (3, 64, 64)]
    kinds = {(c.architecture, c.image_shape, c.likelihood, c.decoder_std)
             for c in bench.select_cases(_args(cases=["likelihoods"]))}
    assert kinds == {("kp-mnist", (1, 28, 28), "gaussian", "learned"),
                     ("mlp1", (3, 32, 32), "gaussian", 0.1)}
    quick = {c.architecture: c.options for c in bench.select_cases(_args(quick=True))}
    assert quick == {"mlp1": {"hidden": 32}, "mlp3": {"hidden": 32}, "cnn1": {"channels": 8},
                     "cnn3": {"channels": 8}, "kp-mnist": {"width": 0.05}}


def test_both_trainers_get_the_case_in_one_group_spec():
    case = bench.Case("likelihoods", "mlp1", (1, 28, 28), "gaussian", "learned", {"hidden": 32})
    spec = bench.group_spec(case, 3, 5, batch=16)
    assert (spec.image_shape, spec.likelihood, spec.decoder_std) == ((1, 28, 28), "gaussian",
                                                                     "learned")
    assert spec.architecture_options == {"hidden": 32} and spec.seeds == (0, 1, 2)
    # mlp1, 784 -> 32 -> 20 and 10 -> 32 -> 784, and one learned log σ
    macs = 784 * 32 + 32 * 20 + 10 * 32 + 32 * 784
    assert bench.case_costs(case) == (macs, macs + 32 + 20 + 32 + 784 + 1)
    images = bench.case_images(case, 40)
    assert images.shape == (40, 28, 28, 1) and images.dtype == np.uint8


def test_kp_mnist_flops_known_answer_picks_few_steps_on_cpu():
    # Kumar & Poole's MNIST network, per example (BatchNorm and ELU count 0):
    # convolutions 28²·64·16, 14²·128·64·16, 7²·256·128·16, 4²·512·256·16, 4²·512·512·16,
    # FC 8192·20, FC 10·7²·256, transposed 7²·256·512·16, 7²·512·256·16, 7²·256·128·16,
    # 14²·128·64·16, convolution 28²·64·16
    macs = (802_816 + 25_690_112 + 25_690_112 + 33_554_432 + 67_108_864 + 163_840
            + 125_440 + 102_760_448 + 102_760_448 + 25_690_112 + 25_690_112 + 802_816)
    case = next(c for c in bench.CASES if c.architecture == "kp-mnist")
    assert bench.case_costs(case)[0] == macs == 410_839_552
    flops = 6 * macs * bench.BATCH  # 315 GFLOP per model-iteration
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench._plan(_args(), cpu, flops) == ([1, 4], 2, 1, 2)
    assert bench._plan(_args(), cpu, 1e9) == ([1, 4, 12], 6, 2, 5)
    assert bench._plan(_args(), cuda, flops) == ([1, 4, 12, 60], 50, 10, 2)
    assert bench._plan(_args(models=[3], steps=4), cpu, flops) == ([3], 4, 1, 2)


def test_rejects_bad_arguments():
    with pytest.raises(InputError, match="cnn9"):
        bench._validate(_args(architectures=["cnn9"]))
    with pytest.raises(InputError, match="case set 'mnist'"):
        bench._validate(_args(cases=["mnist"]))
    with pytest.raises(InputError, match="no case of --cases shapes uses mlp3"):
        bench._validate(_args(cases=["shapes"], architectures=["mlp3"]))
    with pytest.raises(InputError, match="models"):
        bench._validate(_args(models=[0]))
    for batch in (0, bench.BENCH_IMAGES + 1):  # distinct examples: at most the bench's images
        with pytest.raises(InputError, match="batch"):
            bench._validate(_args(batch=batch))
    bench._validate(_args(batch=bench.BENCH_IMAGES, architectures=["kp-mnist"]))


def test_timers_and_copy_bandwidth_run_tiny():
    cpu = torch.device("cpu")
    for case in (bench.Case("paper", "cnn1", options={"channels": 8}),
                 bench.Case("likelihoods", "kp-mnist", (1, 28, 28), "gaussian", "learned",
                            {"width": 0.05})):
        images = bench.case_images(case, 40)
        assert bench.time_vectorised(case, 2, 2, 1, images, cpu, batch=8) > 0
        assert bench.time_loop(case, 2, 2, 1, images, cpu, batch=8) > 0
    assert bench.copy_bandwidth(cpu, n_bytes=1 << 20, repeats=2) > 0


def test_quick_run_writes_every_case_and_projects_from_paper_rows(monkeypatch, tmp_path):
    from rdbench.cli import main

    monkeypatch.setattr(bench, "matmul_peak", lambda device: 1e12)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda device: 1e11)
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--device", "cpu", "--quick", "--models", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["architecture"], tuple(r["image_shape"]), r["likelihood"], r["decoder_std"])
            for r in rows] == [(c.architecture, c.image_shape, c.likelihood, c.decoder_std)
                               for c in bench.CASES]
    assert all(r["vectorised_its"] > 0 and r["loop_its"] > 0 and r["models"] == 2
               and r["architecture_options"] for r in rows)
    paper = {r["architecture"]: r for r in rows if r["case"] == "paper"}
    hours = result["projection"]["hours"]
    assert set(hours) == {"mlp1", "mlp3", "cnn1", "cnn3"}
    for arch, h in hours.items():  # mlp1's Gaussian row (3×32×32 too) is not the paper's
        assert h == pytest.approx(bench.PAPER_MODEL_ITERATIONS
                                  / paper[arch]["vectorised_its"] / 3600)
    assert result["quick"] is True


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
    # --force replaces only what rdbench wrote: never the user's file, an other bench's result
    assert main(["bench", what, *benches[what], "--out", str(user), "--force"]) == 2
    assert user.read_text() == '{"mine": 1}'
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"bench": "other"}))
    with pytest.raises(MeasuringError):
        main(["bench", what, *benches[what], "--out", str(other), "--force"])
    earlier = tmp_path / "results" / f"{what}.json"  # a re-run into the same path
    earlier.parent.mkdir()
    earlier.write_text(json.dumps({"bench": what}))
    with pytest.raises(MeasuringError):
        main(["bench", what, *benches[what], "--out", str(earlier)])


def test_bench_eval_validates_the_device_as_every_command(capsys):
    from rdbench.cli import main

    assert main(["bench", "eval", "--device", "tpu"]) == 2
    assert "invalid device 'tpu'" in capsys.readouterr().err
