"""``rdbench bench eval``: cost of the SPEC §5 estimators and of evaluation (SPEC §8).

- the rate decomposition of N = 81,920 encodings, d = 10 (the largest training set): exact
  (target < 60 s on CPU) and minibatch (B = 512), on synthetic Gaussian encodings;
- evaluation throughput, images/s per model, of :func:`analysis.evaluate.encode_set` (one
  vmapped encode + posterior sample + decode + Bernoulli NLL over a group of M models,
  chunks of 256) for mlp1 … cnn3, on the CPU and on CUDA when present. Freshly initialised
  models: throughput does not depend on the weights;
- the peak memory (RSS) of ``rdbench evaluate --iwae-samples 10 --iwae-subset 100`` on a
  group of 6 mlp1 runs on ``cv-8192``: with the full dataset, 155,648 test images (the
  target is ≤ 2 GB); the dataset is generated and the runs trained (50 iterations) into a
  temporary directory first. Evaluate runs in a child process, whose own peak is read from
  ``os.wait4``. ``--quick``: the 512-image dataset of the tests, 2 iterations.

Prints a Markdown table; ``--out FILE.json`` writes the results with the device names
(``"bench": "eval"`` marks the file as one a re-run may replace).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analysis import estimators as est
from analysis.evaluate import EvalSettings, ModelGroup, encode_set
from rdbench.device import device_name, synchronize
from rdbench.io import check_bench_output, report_bench_result

ARCHITECTURES = ("mlp1", "mlp3", "cnn1", "cnn3")


def main(args: argparse.Namespace) -> int:
    devices = _devices(args.device)
    out = check_bench_output(args.out, args.force, "eval")
    quick = bool(args.quick)
    n_rate, n_images, models = (8192, 512, 2) if quick else (81920, 4096, 8)
    results: dict[str, Any] = {"bench": "eval", "quick": quick,
                               "cpu": platform.processor() or platform.machine(),
                               "torch_threads": torch.get_num_threads(), "devices": {},
                               "rate_decomposition": [], "throughput": [],
                               "evaluate_memory": []}
    for device in devices:
        results["devices"][str(device)] = device_name(device)
        results["rate_decomposition"] += bench_rate_decomposition(n_rate, device)
        for arch in ARCHITECTURES:
            results["throughput"].append(bench_throughput(arch, models, n_images, device))
    results["evaluate_memory"] = bench_evaluate_memory(devices, quick)
    report_bench_result(out, results, markdown(results))
    return 0


def bench_rate_decomposition(n: int, device: torch.device, d: int = 10) -> list[dict]:
    """Seconds for :func:`rate_decomposition` of n synthetic encodings, exact and B = 512."""
    g = torch.Generator().manual_seed(0)
    mu = (0.8 * torch.randn(n, d, generator=g)).to(device)
    logvar = (math.log(0.36) + 0.3 * torch.randn(n, d, generator=g)).to(device)
    rows = []
    for batch in (None, 512):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = est.rate_decomposition(mu, logvar, batch_size=batch,
                                     generator=torch.Generator().manual_seed(1))
        synchronize(device)
        rows.append({"device": str(device), "n": n, "d": d,
                     "batch_size": "exact" if batch is None else batch,
                     "seconds": time.perf_counter() - start,
                     "cpu_seconds": time.process_time() - cpu_start,  # all threads
                     "mutual_information": out["mutual_information"]})
    return rows


def bench_throughput(arch: str, models: int, n_images: int, device: torch.device) -> dict:
    """Images/s per model of one evaluation pass (encode, sample, decode, NLL) over M models."""
    from benchmark.models import build_model

    torch.manual_seed(0)
    group = ModelGroup([build_model(arch).to(device).eval() for _ in range(models)],
                       [{"objective": "beta_vae", "run_id": str(i), "beta": 1.0}
                        for i in range(models)])
    images = np.random.default_rng(0).integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    rows = np.arange(n_images)
    settings = EvalSettings(batch_size=256)
    gens = [torch.Generator().manual_seed(i) for i in range(models)]
    encode_set(group, images, rows[:256], gens, settings)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    encode_set(group, images, rows, gens, settings)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"device": str(device), "architecture": arch, "models": models, "images": n_images,
            "seconds": seconds, "images_per_s_per_model": n_images / seconds,
            "images_per_s": n_images * models / seconds}


MEMORY_RUNS = 6  # the group whose evaluation the issue measured (20.4 GB for 12 runs then)
MEMORY_EVALUATE = ["--iwae-samples", "10", "--iwae-subset", "100"]


def bench_evaluate_memory(devices: list[torch.device], quick: bool) -> list[dict]:
    """Peak RSS of ``rdbench evaluate`` per device on 6 mlp1 runs of ``cv-8192``, generated
    and trained into a temporary directory (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="rdbench-bench-eval-") as tmp:
        print(f"bench eval: generating the {'tiny' if quick else 'full'} dataset and training "
              f"{MEMORY_RUNS} mlp1 runs in {tmp} (removed afterwards) to measure evaluate's "
              "peak memory", file=sys.stderr, flush=True)
        runs_dir, n_test = _trained_group(Path(tmp), quick)
        rows = []
        for device in devices:
            command = ["evaluate", str(runs_dir), *MEMORY_EVALUATE, "--device", str(device),
                       "--force"]
            rows.append({"device": str(device), "runs": MEMORY_RUNS, "split": "cv-8192",
                         "test_images": n_test, "peak_rss_bytes": _peak_rss(command)})
    return rows


def _trained_group(tmp: Path, quick: bool) -> tuple[Path, int]:
    """The dataset (tiny with ``quick``) and 6 finished mlp1 runs on its cv-8192 split."""
    from tetrominoes.build import TINY_GRID, generate

    data = generate(tmp / "data", seed=0, progress=False, _grid=TINY_GRID if quick else None)
    grid = {"name": "bench-eval", "dataset": str(data), "splits": ["cv-8192"],
            "architectures": ["mlp1"], "objectives": ["beta_vae"],
            "betas": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0][:MEMORY_RUNS], "seeds": [0],
            "iterations": 2 if quick else 50, "batch_size": 8 if quick else 64,
            "learning_rate": 1e-3, "checkpoint_every": 50, "log_every": 2, "device": "cpu"}
    path = tmp / "grid.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in grid.items()))
    _peak_rss(["train", str(path), "--out", str(tmp / "runs")])
    import imagesets

    return tmp / "runs", len(imagesets.load(data).split("cv-8192").test)


def _peak_rss(command: list[str]) -> int:
    """Run ``rdbench COMMAND`` in a child process; its peak resident set size in bytes
    (``os.wait4``: that child's own, not this process's nor another child's)."""
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", "rdbench", *command],
                                 stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if child.returncode:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"rdbench {command[0]} failed ({child.returncode}): {tail}")
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux


def markdown(results: dict) -> str:
    """Three Markdown tables: rate decomposition seconds, evaluation throughput, evaluate's
    peak memory."""
    lines = ["| device | N | d | estimator | seconds | CPU seconds | Î (nats) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in results["rate_decomposition"]:
        lines.append(f"| {results['devices'][r['device']]} | {r['n']:,} | {r['d']} | "
                     f"{r['batch_size']} | {r['seconds']:.2f} | {r['cpu_seconds']:.1f} | "
                     f"{r['mutual_information']:.3f} |")
    lines += ["", "| device | architecture | models | images/s per model | images/s total |",
              "|---|---|---:|---:|---:|"]
    for r in results["throughput"]:
        lines.append(f"| {results['devices'][r['device']]} | {r['architecture']} | "
                     f"{r['models']} | {r['images_per_s_per_model']:,.0f} | "
                     f"{r['images_per_s']:,.0f} |")
    lines += ["", "| device | `rdbench evaluate` of | test images | peak RSS | target |",
              "|---|---|---:|---:|---|"]
    for r in results.get("evaluate_memory", []):
        lines.append(f"| {results['devices'][r['device']]} | {r['runs']} mlp1 runs on "
                     f"{r['split']} | {r['test_images']:,} | "
                     f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | ≤ 2 GB (full dataset) |")
    return "\n".join(lines)


def _devices(spec: str) -> list[torch.device]:
    """``auto``: the CPU, plus CUDA when present; otherwise the one device named, validated
    as every command validates devices (:func:`rdbench.device.resolve_device`)."""
    from rdbench.device import resolve_device

    if spec == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                        else [])
    return [resolve_device(spec)]
