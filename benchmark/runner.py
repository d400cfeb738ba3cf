"""Run a grid: plan jobs (vectorised groups of runs), dispatch them, keep the disk in sync.

A *job* is a group of runs that share split, architecture, objective (and its options),
training settings and the iteration they start from; it trains as one stacked model in
one process on one device (``benchmark.trainer.train_group``). Jobs are dispatched with
joblib: in-process for one worker, ``loky`` processes for several (one per listed
device), or a Dask cluster through joblib's Dask backend at an address the user gives.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import runs as runs_io
from benchmark.config import GridConfig
from rdbench.device import resolve_device
from rdbench.io import InputError


@dataclass(frozen=True)
class Job:
    """One vectorised training job: what ``run_job`` needs, picklable for joblib/Dask."""

    spec: Any  # benchmark.trainer.GroupSpec
    dataset: str
    split: str
    run_dirs: tuple[str, ...]
    start: int
    # Per trained run, the runs that get a copy of everything it writes: for an objective
    # that ignores β (``ae``), the runs of one seed at other βs would train the same model.
    copies: tuple[tuple[str, ...], ...] = ()

    def outputs(self) -> list[list[Path]]:
        """Per trained run, every run directory its files go to (itself first)."""
        copies = self.copies or ((),) * len(self.run_dirs)
        return [[Path(d), *map(Path, c)] for d, c in zip(self.run_dirs, copies, strict=True)]


def plan(grid: GridConfig, runs: list[dict[str, Any]], runs_dir: Path) -> tuple[list[Job], dict]:
    """Group the unfinished runs into jobs; count the finished ones as skipped."""
    from benchmark.trainer import GroupSpec

    pending: dict[tuple, list[tuple[dict[str, Any], int]]] = {}
    skipped: Counter = Counter()
    for run in runs:
        run_dir = Path(runs_dir) / run["run_id"]
        status = runs_io.read_status(run_dir)["status"] if run_dir.exists() else "pending"
        if status in ("done", "failed"):
            skipped[status] += 1
            continue
        start = _resume_iteration(run_dir)
        options = dict(run["objective_options"], dataset_size=run["n_train"])
        key = (run["split"], run["architecture"], run["objective"],
               tuple(sorted(options.items())), start)
        pending.setdefault(key, []).append((run, start))
    jobs = []
    for (split, arch, objective, options, start), members in pending.items():
        copies = _same_model_runs(objective, members, runs_dir)
        members = [m for m in members if m[0]["run_id"] in copies]
        for chunk in _chunks(members, grid.max_group_size):
            spec = GroupSpec(
                architecture=arch, objective=objective, objective_options=dict(options),
                betas=tuple(r["beta"] for r, _ in chunk), seeds=tuple(r["seed"] for r, _ in chunk),
                iterations=grid.iterations, batch_size=grid.batch_size,
                learning_rate=grid.learning_rate, log_every=grid.log_every,
                checkpoint_every=grid.checkpoint_every, latent_dim=grid.latent_dim,
                precision=grid.precision)
            run_dirs = tuple(str(Path(runs_dir) / r["run_id"]) for r, _ in chunk)
            jobs.append(Job(spec, chunk[0][0]["dataset"], split, run_dirs, start,
                            tuple(copies[r["run_id"]] for r, _ in chunk)))
    return jobs, dict(skipped)


def _same_model_runs(objective: str, members: list[tuple[dict, int]], runs_dir: Path
                     ) -> dict[str, tuple[str, ...]]:
    """run_id of each run to train -> the directories of the runs that copy it.

    Every run trains, except under an objective that ignores β: there the runs of one
    seed (same split, architecture, options and start) would train the same model, so the
    first trains and the others receive its files.
    """
    from benchmark.objectives import get_objective

    if get_objective(objective).uses_beta:
        return {r["run_id"]: () for r, _ in members}
    by_seed: dict[int, list[str]] = {}
    for r, _ in members:
        by_seed.setdefault(r["seed"], []).append(r["run_id"])
    return {ids[0]: tuple(str(Path(runs_dir) / i) for i in ids[1:])
            for ids in by_seed.values()}


def _resume_iteration(run_dir: Path) -> int:
    """The iteration of the run's checkpoint (read lazily: mmap, no tensor is copied)."""
    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])


def _chunks(items: list, size: int) -> list[list]:
    iterator = iter(items)
    return [chunk for chunk in iter(lambda: list(itertools.islice(iterator, size)), [])]


def run_job(job: Job, device: str, progress: bool = True, threads: int | None = None
            ) -> list[tuple[str, str]]:
    """Train one job, writing checkpoints, history, models and statuses as it goes."""
    import numpy as np
    import torch

    import tetrominoes
    from benchmark.trainer import train_group

    if threads:
        torch.set_num_threads(threads)
    data = tetrominoes.load(job.dataset)
    images = np.ascontiguousarray(data.images[data.split(job.split).train])  # (N, 32, 32, 3)
    outputs = job.outputs()  # per trained run: its directory, then those of its copies
    states = [runs_io.load_checkpoint(dirs[0]) for dirs in outputs] if job.start else None
    histories = [runs_io.read_history(dirs[0], up_to=job.start) for dirs in outputs]
    for d in itertools.chain.from_iterable(outputs):
        runs_io.write_status(d, "running", job.start)

    def on_log(iteration: int, rows: list[dict[str, float]]) -> None:
        for history, row in zip(histories, rows, strict=True):
            history.append({"iteration": iteration, **row})

    def on_checkpoint(states: list[Any]) -> None:
        for dirs, state, history in zip(outputs, states, histories, strict=True):
            for d in dirs:
                runs_io.save_checkpoint(d, state, history)

    final = train_group(job.spec, images, device=resolve_device(device), states=states,
                        on_log=on_log, on_checkpoint=on_checkpoint, progress=progress)
    return [(d.name, runs_io.finish_run(d, s, h))
            for dirs, s, h in zip(outputs, final, histories, strict=True) for d in dirs]


def dispatch(jobs: list[Job], devices: list[str], workers: int, backend: str,
             scheduler: str | None) -> list[tuple[str, str]]:
    """Run jobs with joblib; returns (run_id, status) for every trained run."""
    from joblib import Parallel, delayed, parallel_config
    from tqdm.auto import tqdm

    if not jobs:
        return []
    results: list[tuple[str, str]] = []
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", position=0, file=sys.stderr)
    if backend == "dask":
        from dask.distributed import Client

        client = Client(scheduler)  # only ever the address the user gave
        calls = (delayed(run_job)(job, devices[i % len(devices)], False)
                 for i, job in enumerate(jobs))
        with parallel_config(backend="dask", wait_for_workers_timeout=60):
            for out in Parallel(n_jobs=-1, return_as="generator_unordered")(calls):
                results += out
                bar.update()
        client.close()
    elif workers == 1:
        for i, job in enumerate(jobs):
            results += run_job(job, devices[i % len(devices)], progress=True)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        calls = (delayed(run_job)(job, devices[i % len(devices)], False, threads)
                 for i, job in enumerate(jobs))
        for out in Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")(
                calls):
            results += out
            bar.update()
    bar.close()
    return results


def check_backend(backend: str, scheduler: str | None, devices: list[str], workers: int | None
                  ) -> int:
    """Validate the dispatch options up front; returns the number of workers."""
    if backend not in ("loky", "dask"):
        raise InputError(f"unknown backend {backend!r}; valid: loky, dask")
    if backend == "dask":
        if not scheduler:
            raise InputError("--backend dask needs --scheduler tcp://HOST:PORT "
                             "(rdbench never starts or guesses a cluster)")
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise InputError("the dask backend needs `pip install rdbench[dask]`") from None
    elif scheduler:
        raise InputError("--scheduler is only used with --backend dask")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    return workers or len(devices)
