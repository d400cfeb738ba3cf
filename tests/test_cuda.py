"""The pipeline on a CUDA device: train → evaluate through the CLI, GRAE, CPU agreement.

Skipped without CUDA (CI has none); the trainer's own CUDA cases are parametrized in
``test_trainer.py``. Run on a GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from benchmark import implicit
from benchmark import runs as runs_io
from benchmark.models import build_model
from rdbench.cli import main

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

EVAL = ["--iwae-samples", "30", "--iwae-subset", "0", "--mi-batch", "64", "--nn-subset", "60",
        "--batch-size", "100"]


def _grid(path: Path, dataset: Path) -> Path:
    grid = {"name": "tiny", "dataset": str(dataset), "splits": ["random"],
            "architectures": ["mlp1", "cnn1"], "objectives": ["beta_vae", "grae"],
            "betas": [0.5, 2.0], "seeds": [0], "iterations": 12, "batch_size": 8,
            "checkpoint_every": 4, "log_every": 2, "device": "cuda"}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in grid.items()) + "\n")
    return path


@pytest.mark.usefixtures("cuda_reproducible")  # TF32 off: CUDA and CPU agree to ~1e-6
def test_train_and_evaluate_on_cuda(read_metrics, tiny_dataset, tmp_path):
    """A grid trains on CUDA; evaluating its runs on CUDA and on CPU gives the same numbers.

    Evaluation draws all its noise from seeded CPU generators and moves it to the device, so
    both evaluations see the same samples and differ by float rounding alone.
    """
    runs_dir = tmp_path / "runs"
    assert main(["train", str(_grid(tmp_path / "g.toml", tiny_dataset)),
                 "--out", str(runs_dir)]) == 0
    statuses = {d.name: runs_io.read_status(d)["status"] for d in runs_io.find_runs(runs_dir)}
    assert len(statuses) == 8 and set(statuses.values()) == {"done"}
    shutil.copytree(runs_dir, tmp_path / "cpu")
    assert main(["evaluate", str(runs_dir), *EVAL, "--device", "cuda"]) == 0
    assert main(["evaluate", str(tmp_path / "cpu"), *EVAL, "--device", "cpu"]) == 0
    gpu, cpu = read_metrics(runs_dir), read_metrics(tmp_path / "cpu")
    assert gpu.keys() == cpu.keys() and len(gpu) == 8
    for run_id in gpu:
        for split in ("train", "test"):
            g, c = gpu[run_id][split], cpu[run_id][split]
            assert g.keys() == c.keys()
            assert g["mutual_information"] <= math.log(g["n"]) + 1e-6
            for key, value in c.items():
                assert g[key] == pytest.approx(value, rel=1e-3, abs=1e-3), (run_id, split, key)


@pytest.mark.parametrize("arch", ["mlp1", "cnn1"])
def test_grae_on_cuda_matches_cpu(arch):
    torch.manual_seed(0)
    model = build_model(arch).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    beta = torch.tensor(0.5, dtype=torch.float64)
    noise = {"eps": torch.randn(4, 10, dtype=torch.float64), "u": torch.rand(4)}
    cpu = implicit.grae_loss(model, x, beta, noise, {})
    gpu = implicit.grae_loss(model.to("cuda"), x.to("cuda"), beta.to("cuda"),
                             {k: v.to("cuda") for k, v in noise.items()}, {})
    for key in ("loss", "log_det"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-9, atol=1e-9)
