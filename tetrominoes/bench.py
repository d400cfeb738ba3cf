"""``rdbench bench data``: rendering throughput, full generation time and peak memory (§8),
and the import throughput and peak memory of a 3dShapes-sized file (:mod:`imagesets.bench`).

Both renderers draw the same random factors in the same process, one after the other:
``tetrominoes.render`` (vectorised, exact coverage, one process) against the per-image
Pillow renderer of ``tetrominoes.reference`` (16× canvas + BOX downsampling). The full
dataset is then generated in a child process (``--workers`` render processes) into a
temporary directory, which is deleted; its peak memory is the child's max RSS plus
workers × the largest worker's max RSS (an upper bound: they run at once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rdbench.io import InputError, check_bench_output, report_bench_result
from tetrominoes.factors import BINS, N_IMAGES, sample_factors

QUICK_GRID = (8, 4, 5, 8, 8)  # 10,240 images
_CHILD = """
import json, resource, sys, time
from tetrominoes.build import generate
grid = json.loads(sys.argv[3])
t = time.perf_counter()
generate(sys.argv[1], seed=0, workers=int(sys.argv[2]), progress=False,
         _grid=tuple(grid) if grid else None)
wall = time.perf_counter() - t
cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
          resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
print(json.dumps({"seconds": wall, "cpu_seconds": cpu,
                  "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _seconds(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``; CPU time is what a shared machine does not inflate."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare_renderers(n: int, seed: int = 0, repeats: int = 3) -> dict:
    """Images/s of both renderers on the same ``n`` random dataset rows, and their agreement."""
    from tetrominoes.raster import render
    from tetrominoes.reference import render_pillow

    factors = sample_factors(seed).sample(n, random_state=seed).to_numpy()
    fast, slow = render(factors), render_pillow(factors)
    # interleaved, best of each: both renderers see the same (shared) machine load
    times = [(*_seconds(lambda: render(factors)), *_seconds(lambda: render_pillow(factors)))
             for _ in range(repeats)]
    fast_wall, fast_cpu, slow_wall, slow_cpu = np.min(times, axis=0)
    diff = np.abs(fast.astype(np.int16) - slow.astype(np.int16))
    return {"n": n, "repeats": repeats, "vectorised_images_per_s": n / fast_wall,
            "per_image_images_per_s": n / slow_wall, "speedup": slow_wall / fast_wall,
            "vectorised_images_per_cpu_s": n / fast_cpu, "per_image_images_per_cpu_s": n / slow_cpu,
            "speedup_cpu": slow_cpu / fast_cpu,
            "mean_abs_diff_uint8": float(diff.mean()), "max_abs_diff_uint8": int(diff.max())}


def time_generation(workers: int, grid: tuple[int, ...] | None) -> dict:
    """Wall time and peak memory of ``generate`` in a child process (temporary output)."""
    tmp = Path(tempfile.mkdtemp(prefix="rdbench-bench-data-"))
    try:
        cmd = [sys.executable, "-c", _CHILD, str(tmp / "data"), str(workers),
               json.dumps(list(grid) if grid else None)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        total = time.perf_counter() - start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"generation failed:\n{done.stderr}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    n = int(np.prod(grid if grid else BINS))
    peak = child["self_rss_mb"] + (workers if workers > 1 else 0) * child["worker_rss_mb"]
    return {"images": n, "workers": workers, "seconds": child["seconds"],
            "cpu_seconds": child["cpu_seconds"], "load_average_1min": os.getloadavg()[0],
            "seconds_with_startup": total, "images_per_s": n / child["seconds"],
            "parent_rss_mb": child["self_rss_mb"], "worker_rss_mb": child["worker_rss_mb"],
            "peak_rss_mb_upper_bound": peak}


def markdown(result: dict) -> str:
    r, g = result["render"], result["generate"]
    rows = [
        "| measure | value | target |", "|---|---|---|",
        f"| `tetrominoes.render` (1 process) | {r['vectorised_images_per_s']:,.0f} images/s "
        f"({r['vectorised_images_per_cpu_s']:,.0f} per CPU-s) | |",
        f"| per-image Pillow 16× + BOX | {r['per_image_images_per_s']:,.0f} images/s "
        f"({r['per_image_images_per_cpu_s']:,.0f} per CPU-s) | |",
        f"| speed-up (wall / CPU time) | {r['speedup']:.1f}× / {r['speedup_cpu']:.1f}× | ≥ 5× |",
        f"| mean / max abs. difference | {r['mean_abs_diff_uint8']:.3f} / "
        f"{r['max_abs_diff_uint8']} (of 255) | small |",
        f"| generate {g['images']:,} images, {g['workers']} workers | {g['seconds']:.1f} s "
        f"({g['images_per_s']:,.0f} images/s; {g['cpu_seconds']:.1f} CPU-s; load average "
        f"{g['load_average_1min']:.1f}) | < 30 s (full) |",
        f"| peak memory (parent + workers) | ≤ {g['peak_rss_mb_upper_bound']:,.0f} MB | < 2 GB |",
    ]
    if "import" in result:  # results written before the import bench have no such row
        from imagesets.bench import markdown_rows

        rows += markdown_rows(result["import"])
    return "\n".join(rows)


def run(quick: bool = False, workers: int | None = None) -> dict:
    from imagesets.bench import bench_import_3dshapes, check_import_disk
    from tetrominoes.build import default_workers

    check_import_disk(quick)  # before minutes of measuring
    workers = workers or default_workers()
    grid = QUICK_GRID if quick else None
    result = {
        "bench": "data",  # marks the file as one a re-run may replace
        "device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "quick": quick,
        "render": compare_renderers(256 if quick else 4096),
        "generate": time_generation(workers, grid),
        "full_dataset_images": N_IMAGES,
        "import": bench_import_3dshapes(quick),
    }
    return result


def main(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    out = check_bench_output(args.out, args.force, "data")
    result = run(args.quick, args.workers)
    report_bench_result(out, result, markdown(result))
    return 0
