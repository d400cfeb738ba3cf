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
from benchmark.config import GridConfig, load_grid, parse_devices
from benchmark.grid import expand
from benchmark.runner import Job, check_backend, connect, dispatch, plan
from rdbench.device import resolve_device
from rdbench.io import (
    InputError,
    atomic_write_json,
    check_not_inside_output,
    check_output_dir,
    check_writable_ancestor,
    exclusive_lock,
)

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
    datasets = {path: _load_dataset(path) for path in grid.dataset_paths}
    runs = expand(grid, datasets)
    _check_run_dirs(runs_dir, runs)
    if args.dry_run:
        jobs, skipped = plan(grid, runs, runs_dir)
        _print_plan(grid, runs, jobs, skipped, devices)
        return 0
    client = connect(args.scheduler) if args.backend == "dask" else None
    try:
        with runs_io.writing(runs_dir / _MARKER):
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
    grid_file = runs_dir / _MARKER / f"{grid.name}.json"
    try:
        with runs_io.writing(grid_file):
            atomic_write_json(grid_file, vars_of(grid))
        for run in runs:
            runs_io.create_run(runs_dir, run)
        print(f"rdbench train: {len(runs)} runs, {len(jobs)} jobs "
              f"({sum(skipped.values())} finished before) → {runs_dir}", file=sys.stderr)
        results = dispatch(jobs, devices, workers, backend, client)
    except runs_io.RunWriteError as e:  # raised here or in a worker (loky pickles it)
        raise InputError(f"{e}; {_kept(runs, runs_dir)}") from None
    except OSError as e:  # a full disk, quota or read-only file system: the CLI's one line
        e.add_note(_kept(runs, runs_dir))
        raise
    return _summarise(results, skipped, runs_dir)


def _kept(runs: list[dict], runs_dir: Path) -> str:
    """What a grid stopped by a failed write keeps: its finished runs, and the checkpoints
    the others resume from when the grid is run again."""
    finished = resumable = 0
    for run in runs:
        run_dir = runs_dir / run["run_id"]
        with contextlib.suppress(InputError, OSError):  # a damaged run keeps nothing
            if runs_io.is_finished(run_dir):
                finished += 1
            elif len(runs_io.checkpoints(run_dir)[0]) > 1:  # more than a fresh start
                resumable += 1
    return (f"kept: {finished} of {len(runs)} runs finished, {resumable} more with a "
            "checkpoint to resume from when the grid runs again")


@contextlib.contextmanager
def runs_lock(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the runs directory: two ``rdbench train`` writing the same
    runs would rewind each other's checkpoints. Released by the OS if the process dies."""
    with contextlib.ExitStack() as stack:
        with runs_io.writing(lock):  # (opened for appending)
            held = stack.enter_context(exclusive_lock(lock))
        if not held:
            raise InputError(f"another `rdbench train` is writing to {lock.parent.parent}; "
                             "wait for it (or stop it) and run again")
        yield


def _runs_dir(args: argparse.Namespace, grid: GridConfig) -> Path:
    """The runs directory, resolved and checked before any work: not inside a dataset, nor
    inside another command's output without ``--force`` (even when trained into before);
    writable; empty, or written by ``rdbench train`` before (it holds ``grids/``), or
    ``--force``."""
    runs_dir = Path(args.out) if args.out else Path("runs") / grid.name
    check_not_inside_output(runs_dir.resolve(), args.force)
    is_ours = (runs_dir / _MARKER).is_dir()
    runs_dir = check_output_dir(runs_dir, force=args.force or is_ours,
                                inputs=list(grid.dataset_paths))
    if is_ours:
        _check_writable_directory(runs_dir / _MARKER)
    return runs_dir


def _check_run_dirs(runs_dir: Path, runs: list[dict]) -> None:
    """The grid's run directories that exist already are writable directories of their own
    (a link would send the run's files elsewhere): checked before any work."""
    for run in runs:
        run_dir = runs_dir / run["run_id"]
        if run_dir.is_symlink():
            raise InputError(f"run directory {run_dir} is a symbolic link; rdbench writes runs "
                             "only inside the runs directory: remove the link")
        if run_dir.exists():
            _check_writable_directory(run_dir)


def _check_writable_directory(path: Path) -> None:
    if not path.is_dir():
        raise InputError(f"{path} is not a directory, and rdbench train writes into a "
                         "directory of that name: move it away")
    check_writable_ancestor(path)


def _load_dataset(path: str) -> Any:
    import imagesets

    if not Path(path).is_dir():
        raise InputError(f"dataset directory not found: {path} (create it with `rdbench data "
                         "generate --out DIR` or `rdbench data import KIND --out DIR`)")
    return imagesets.load_verified(path)


def vars_of(grid: GridConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(grid)


def _print_plan(grid: GridConfig, runs: list[dict], jobs: list[Job], skipped: dict,
                devices: list[str]) -> None:
    axes = [(len(grid.dataset_paths), "datasets"), (len(grid.splits), "splits"),
            (len(grid.architectures), "architectures")]
    shown = " × ".join(f"{n} {what}" for n, what in axes)
    rest = len(runs) // max(1, len(grid.dataset_paths) * len(grid.splits)
                            * len(grid.architectures))
    print(f"grid {grid.name!r}: {len(runs)} runs ({shown} × {rest} objective/model/β/seed "
          f"combinations); finished already: "
          f"{', '.join(f'{n} {status}' for status, n in skipped.items()) or 'none'}")
    print(f"{len(jobs)} jobs on {', '.join(devices)}:")
    table = [("dataset", "split", "architecture", "objective", "models", "from it.")] + [
        (Path(job.dataset).name, job.split, job.spec.architecture, job.spec.objective,
         str(len(job.spec.betas)), str(job.start)) for job in jobs]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  " + "  ".join(f"{c:<{w}}" if i < 4 else f"{c:>{w}}"
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    flops, model_iters = _estimate_cost(jobs)
    print(f"cost: {model_iters:,} model-iterations, {flops / 1e15:,.2f} PFLOP "
          f"(forward + backward, FlopCounterMode; validation passes included)")
    for label, rate in [("one GPU at 100 TFLOP/s", 100e12), ("a 2-core CPU at 150 GFLOP/s", 150e9)]:
        print(f"  ≈ {flops / rate / 3600:,.1f} h on {label}, if that rate were sustained")
    print("  (a lower bound: these small models reach a few % of a GPU's peak; "
          "`rdbench bench train` measures the real rate and projects configs/paper.toml)")
    print("dry run: nothing was written or started")


def _estimate_cost(jobs: list[Job]) -> tuple[float, int]:
    """FLOPs and model-iterations of the jobs; a validation pass (forward only, ≈ a third of
    a training step per image) every ``validate_every`` iterations is added."""
    per_model: dict[str, float] = {}
    flops = 0.0
    model_iters = 0
    for job in jobs:
        s = job.spec
        key = repr((s.architecture, s.objective, sorted(s.objective_options.items()),
                    s.latent_dim, s.batch_size, sorted(s.model_fields().items())))
        if key not in per_model:
            per_model[key] = _flops_per_iteration(s)
        iters = (s.iterations - job.start) * len(s.betas)
        model_iters += iters
        step = per_model[key]
        validations = (s.iterations - job.start) // s.validate_every if s.validate_every else 0
        flops += step * iters + validations * len(s.betas) * step / 3 * job.validation \
            / s.batch_size
    return flops, model_iters


_PROBES = (2, 3, 4, 5)  # batch sizes a step's FLOPs are counted at (2: B - 1 > 0)


def _flops_per_iteration(spec: Any) -> float:
    """FLOPs of one training step of one model of the group ``spec`` (forward + backward),
    counted by torch.

    Counted at batches of 2, 3 and 4 and extrapolated to ``batch_size``: a step's FLOPs are
    a polynomial of degree ≤ 2 in the batch (per-example layers; the minibatch estimators'
    B × B terms), which three points give exactly. A fourth point checks it (else the count
    is made at ``batch_size`` itself), so the dry run never needs a full step's memory.
    """
    from benchmark.trainer import init_model

    model = init_model(spec, 0)
    options = dict(spec.objective_options, dataset_size=max(spec.batch_size, _PROBES[-1]))

    def count(batch: int) -> int:
        return _count_flops(model, spec.objective, options, spec.latent_dim,
                            tuple(spec.image_shape), batch)

    if spec.batch_size <= _PROBES[-1]:
        return float(count(spec.batch_size))
    points = [(b, count(b)) for b in _PROBES]
    if _quadratic_through(points[:3], points[3][0]) != points[3][1]:
        return float(count(spec.batch_size))
    return float(_quadratic_through(points[:3], spec.batch_size))


def _quadratic_through(points: list[tuple[int, int]], x: int) -> int:
    """The value at ``x`` of the polynomial of degree ≤ 2 through three integer points
    (Lagrange form; exact for integer polynomials through consecutive integers)."""
    (x0, y0), (x1, y1), (x2, y2) = points
    numerator = (y0 * (x - x1) * (x - x2) * (x1 - x2) - y1 * (x - x0) * (x - x2) * (x0 - x2)
                 + y2 * (x - x0) * (x - x1) * (x0 - x1))
    return numerator // ((x0 - x1) * (x0 - x2) * (x1 - x2))


def _count_flops(model: Any, objective: str, options: dict, latent_dim: int,
                 image_shape: tuple[int, int, int], batch: int) -> int:
    """FLOPs of one step of ``model`` at ``batch``, as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.objectives import get_objective

    obj = get_objective(objective)
    x = torch.rand(batch, *image_shape)
    noise = {"eps": torch.randn(batch, latent_dim), "u": torch.rand(batch)}
    counter = FlopCounterMode(display=False)
    with counter:
        obj.loss(model, x, torch.tensor(1.0), noise, options)["loss"].mean().backward()
    return int(counter.get_total_flops())


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
