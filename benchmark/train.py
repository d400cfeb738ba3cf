"""``rdbench train CONFIG.toml``: validate, plan, (dry-run or) train, summarise."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark import runs as runs_io
from benchmark.config import GridConfig, expand, load_grid, parse_devices
from benchmark.runner import Job, check_backend, connect, dispatch, plan
from rdbench.device import resolve_device
from rdbench.io import InputError, atomic_write_json, check_output_dir, exclusive_lock

_MARKER = "grids"  # RUNS_DIR/grids/<name>.json marks a directory rdbench trains into


def main(args: argparse.Namespace) -> int:
    grid = load_grid(args.config, device=args.device)
    devices = [str(resolve_device(d)) for d in parse_devices(grid.device)]
    workers = check_backend(args.backend, args.scheduler, devices, args.workers)
    # (with Dask the devices are the workers', not these)
    if grid.precision == "bf16" and "cpu" in devices and args.backend != "dask":
        raise InputError("precision = \"bf16\" is autocast on CUDA only; on the cpu the runs "
                         "would train in fp32 under ids that say bf16 (use fp32, or a CUDA "
                         "--device)")
    runs_dir = _runs_dir(args, grid)
    dataset = _load_dataset(grid.dataset)
    runs = expand(grid, dataset)
    if args.dry_run:
        jobs, skipped = plan(grid, runs, runs_dir)
        _print_plan(grid, runs, jobs, skipped, devices)
        return 0
    client = connect(args.scheduler) if args.backend == "dask" else None
    try:
        (runs_dir / _MARKER).mkdir(parents=True, exist_ok=True)
        with runs_lock(runs_dir / _MARKER / ".lock"):
            jobs, skipped = plan(grid, runs, runs_dir)
            return _train(grid, runs, jobs, skipped, runs_dir, devices, workers, args.backend,
                          client)
    finally:
        if client is not None:
            client.close()


def _train(grid: GridConfig, runs: list[dict], jobs: list[Job], skipped: dict, runs_dir: Path,
           devices: list[str], workers: int, backend: str, client: Any) -> int:
    atomic_write_json(runs_dir / _MARKER / f"{grid.name}.json", vars_of(grid))
    for run in runs:
        runs_io.create_run(runs_dir, run)
    print(f"rdbench train: {len(runs)} runs, {len(jobs)} jobs "
          f"({sum(skipped.values())} finished before) → {runs_dir}", file=sys.stderr)
    results = dispatch(jobs, devices, workers, backend, client)
    return _summarise(results, skipped, runs_dir)


@contextlib.contextmanager
def runs_lock(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the runs directory: two ``rdbench train`` writing the same
    runs would rewind each other's checkpoints. Released by the OS if the process dies."""
    with exclusive_lock(lock) as held:
        if not held:
            raise InputError(f"another `rdbench train` is writing to {lock.parent.parent}; "
                             "wait for it (or stop it) and run again")
        yield


def _runs_dir(args: argparse.Namespace, grid: GridConfig) -> Path:
    runs_dir = Path(args.out) if args.out else Path("runs") / grid.name
    is_ours = (runs_dir / _MARKER).is_dir()
    if not is_ours:
        check_output_dir(runs_dir, force=args.force, inputs=[grid.dataset])
    return runs_dir.resolve()


def _load_dataset(path: str) -> Any:
    import tetrominoes

    if not Path(path).is_dir():
        raise InputError(f"dataset directory not found: {path} "
                         "(create it with `rdbench data generate --out DIR`)")
    return tetrominoes.load_verified(path)


def vars_of(grid: GridConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(grid)


def _print_plan(grid: GridConfig, runs: list[dict], jobs: list[Job], skipped: dict,
                devices: list[str]) -> None:
    print(f"grid {grid.name!r}: {len(runs)} runs "
          f"({len(grid.splits)} splits × {len(grid.architectures)} architectures × "
          f"{len(runs) // max(1, len(grid.splits) * len(grid.architectures))} "
          f"objective/β/seed combinations); finished already: "
          f"{', '.join(f'{n} {status}' for status, n in skipped.items()) or 'none'}")
    print(f"{len(jobs)} jobs on {', '.join(devices)}:")
    print(f"  {'split':<14}{'arch':<7}{'objective':<16}{'models':>7}{'from it.':>10}")
    for job in jobs:
        s = job.spec
        print(f"  {job.split:<14}{s.architecture:<7}{s.objective:<16}{len(s.betas):>7}"
              f"{job.start:>10}")
    flops, model_iters = _estimate_cost(grid, jobs)
    print(f"cost: {model_iters:,} model-iterations, {flops / 1e15:,.2f} PFLOP "
          f"(forward + backward, FlopCounterMode)")
    for label, rate in [("one GPU at 100 TFLOP/s", 100e12), ("a 2-core CPU at 150 GFLOP/s", 150e9)]:
        print(f"  ≈ {flops / rate / 3600:,.1f} h on {label}, if that rate were sustained")
    print("  (a lower bound: these small models reach a few % of a GPU's peak; "
          "`rdbench bench train` measures the real rate and projects configs/paper.toml)")
    print("dry run: nothing was written or started")


def _estimate_cost(grid: GridConfig, jobs: list[Job]) -> tuple[float, int]:
    per_arch: dict[tuple, float] = {}
    flops = 0.0
    model_iters = 0
    for job in jobs:
        s = job.spec
        key = (s.architecture, s.objective, tuple(sorted(s.objective_options.items())))
        if key not in per_arch:
            per_arch[key] = _flops_per_iteration(s.architecture, s.objective,
                                                 s.objective_options, grid)
        iters = (s.iterations - job.start) * len(s.betas)
        model_iters += iters
        flops += per_arch[key] * iters
    return flops, model_iters


def _flops_per_iteration(arch: str, objective: str, options: dict, grid: GridConfig) -> float:
    """FLOPs of one training step of one model (forward + backward), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.objectives import build_objective_model, get_objective

    obj = get_objective(objective)
    model = build_objective_model(objective, arch, grid.latent_dim, options)
    b, d = grid.batch_size, grid.latent_dim
    x = torch.rand(b, 3, 32, 32)
    noise = {"eps": torch.randn(b, d), "u": torch.rand(b)}
    counter = FlopCounterMode(display=False)
    with counter:
        obj.loss(model, x, torch.tensor(1.0), noise, options)["loss"].mean().backward()
    return float(counter.get_total_flops())


def _summarise(results: list[tuple[str, str]], skipped: dict, runs_dir: Path) -> int:
    counts = Counter(status for _, status in results)
    failed = [run_id for run_id, status in results if status == "failed"]
    print(f"rdbench train: done {counts['done']}, failed {counts['failed']}, "
          f"skipped {sum(skipped.values())} (finished before) — runs in {runs_dir}",
          file=sys.stderr)
    for run_id in failed:
        reason = runs_io.read_status(runs_dir / run_id)["reason"]
        print(f"  failed {run_id}: {reason}", file=sys.stderr)
    if counts["busy"] or counts["stale"]:
        print(f"rdbench train: {counts['busy'] + counts['stale']} run(s) left alone: another "
              "process is training them or trained them after this grid was planned (an "
              "earlier `rdbench train`, or its Dask tasks, still running?); run the grid "
              "again once that has finished", file=sys.stderr)
        return 1
    return 0
