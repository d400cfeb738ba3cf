"""Run a grid: plan jobs (vectorised groups of runs), dispatch them, keep the disk in sync.

A *job* is a group of runs that share split, architecture, objective (and its options),
training settings and the iteration they start from; it trains as one stacked model in
one process on one device (``benchmark.trainer.train_group``). Jobs are dispatched with
joblib: in-process for one worker, ``loky`` processes for several (one per listed
device; a job runs on the device of a free worker slot), or a Dask cluster through
joblib's Dask backend at an address the user gives.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import runs as runs_io
from benchmark.config import GridConfig
from rdbench.device import resolve_device
from rdbench.io import InputError, exclusive_lock, json_or_none
from rdbench.processes import exit_with_parent


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
    validation: int = 0  # images held out of the split's training set
    tensorboard: bool = False  # also write each run's history as TensorBoard scalars

    def outputs(self) -> list[list[Path]]:
        """Per trained run, every run directory its files go to (itself first)."""
        copies = self.copies or ((),) * len(self.run_dirs)
        return [[Path(d), *map(Path, c)] for d, c in zip(self.run_dirs, copies, strict=True)]


def plan(grid: GridConfig, runs: list[dict[str, Any]], runs_dir: Path) -> tuple[list[Job], dict]:
    """Group the unfinished runs into jobs; count the finished ones as skipped.

    Runs that checkpointed in one job resume in one job again, at the last iteration every
    one of them has a checkpoint for (0 at worst): a kill between two runs' checkpoint
    writes leaves some a checkpoint ahead, and training them in other groups would change
    their weights by float rounding. Runs no checkpoint names are grouped afresh.
    """
    pending: dict[str, dict[str, Any]] = {}
    iterations: dict[str, set[int]] = {}
    groups: dict[str, tuple[str, ...]] = {}
    skipped: Counter = Counter()
    finished: set[str] = set()
    for run in runs:
        run_dir = Path(runs_dir) / run["run_id"]
        status = runs_io.read_status(run_dir)["status"]
        if status in runs_io.FINISHED:
            skipped[status] += 1
            finished.add(run["run_id"])
            continue
        found, groups[run["run_id"]] = (runs_io.checkpoints(run_dir) if run_dir.exists()
                                        else ({0: None}, ()))
        if len(found) == 1 and (run_dir / "model.pt").exists():  # finish_run writes the
            raise InputError(  # status before it drops the checkpoints: not a kill
                f"run {run['run_id']} has a model.pt but its status.json says "
                f"{status!r} and it has no checkpoint; restore status.json, or delete "
                f"{run_dir} to train it again")
        if len(found) > 1:
            _check_same_source(run, run_dir)
        iterations[run["run_id"]] = set(found)
        pending[run["run_id"]] = dict(run, objective_options=dict(
            run["objective_options"], dataset_size=run["n_train"]))
    jobs = []
    for ids in _resumed_together(groups, pending):
        members = [pending.pop(i) for i in ids]
        _warn_if_regrouped(members, groups, finished, runs_dir)
        start = max(set.intersection(*(iterations[i] for i in ids)))
        jobs += _jobs(grid, members, start, runs_dir)
    # The rest by everything but β and seed (dataset, split, model, objective, settings) and
    # latest checkpoint: 0 for fresh runs, and the iteration of checkpoints written before
    # they named their job.
    rest: dict[tuple, list[dict[str, Any]]] = {}
    for run in pending.values():
        key = (_group_key(run), max(iterations[run["run_id"]]))
        rest.setdefault(key, []).append(run)
    for key, members in rest.items():
        jobs += _jobs(grid, members, key[-1], runs_dir)
    return jobs, dict(skipped)


def _check_same_source(run: dict[str, Any], run_dir: Path) -> None:
    """A run of a user's model class resumes only with the source it was trained with."""
    recorded = (json_or_none(run_dir / "config.json") or {}).get("architecture_source_sha256")
    current = run.get("architecture_source_sha256")
    if recorded is not None and current is not None and recorded != current:
        raise InputError(f"run {run['run_id']} was trained with another version of "
                         f"{run['architecture']} (its source file has changed since: sha256 "
                         f"{recorded[:12]}… then, {current[:12]}… now); restore that file, or "
                         f"delete {run_dir} to train the run again")


def _warn_if_regrouped(members: list[dict[str, Any]], groups: dict[str, tuple[str, ...]],
                       finished: set[str], runs_dir: Path) -> None:
    """Say so when runs resume without some of the runs they trained with (dropped from the
    grid since, unfinished): they go on, in a smaller group, and differ from an
    uninterrupted grid by float rounding. A run missing counts only if no remaining run
    trains its model (``_model_of``)."""
    ids = {r["run_id"] for r in members}
    models = {_model_of(r) for r in members}
    missing = {m for m in set().union(*(groups[i] for i in ids)) - ids - finished
               if not runs_io.is_finished(Path(runs_dir) / m)
               and _model_of(json_or_none(Path(runs_dir) / m / "config.json") or
                             {"run_id": m}) not in models}
    if missing:
        print(f"rdbench train: note: {len(members)} run(s) resume without {len(missing)} run(s) "
              f"they trained with (no longer in the grid, e.g. {sorted(missing)[0]}); their "
              "weights will differ from an uninterrupted grid's by float rounding",
              file=sys.stderr)


def _resumed_together(groups: dict[str, tuple[str, ...]], pending: dict[str, Any]
                      ) -> list[list[str]]:
    """Pending run ids linked by the jobs their checkpoints name (connected components)."""
    parent = {i: i for i in pending}

    def root(i: str) -> str:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, group in groups.items():
        for j in group:
            if j in parent:
                parent[root(j)] = root(i)
    anchored = {root(i) for i in pending if groups[i]}
    components: dict[str, list[str]] = {}
    for i in pending:  # in grid order, as the job that wrote the checkpoints had them
        if root(i) in anchored:
            components.setdefault(root(i), []).append(i)
    return list(components.values())


def _group_key(run: dict[str, Any]) -> str:
    """What the runs of one job share: every field of the run identity but β and seed."""
    from benchmark.grid import GROUP_FIELDS, OPTIONAL_IDENTITY

    fields = {k: run.get(k, OPTIONAL_IDENTITY.get(k)) for k in GROUP_FIELDS}
    return json.dumps({**fields, "dataset": run["dataset"]}, sort_keys=True)


def group_spec(first: dict[str, Any], part: list[dict[str, Any]]) -> Any:
    """The GroupSpec of runs ``part`` that share the settings of the run config ``first``."""
    from benchmark.grid import model_fields
    from benchmark.trainer import GroupSpec

    model = model_fields(first)
    return GroupSpec(
        architecture=first["architecture"], objective=first["objective"],
        objective_options=first["objective_options"],
        betas=tuple(r["beta"] for r in part), seeds=tuple(r["seed"] for r in part),
        iterations=first["iterations"], batch_size=first["batch_size"],
        learning_rate=first["learning_rate"], log_every=first["log_every"],
        checkpoint_every=first["checkpoint_every"], latent_dim=first["latent_dim"],
        precision=first["precision"], image_shape=model["image_shape"],
        likelihood=model["likelihood"], decoder_std=model["decoder_std"],
        activation=model["activation"], architecture_options=model["options"],
        validate_every=first.get("validate_every") or 0, patience=first.get("patience"))


def _jobs(grid: GridConfig, members: list[dict[str, Any]], start: int, runs_dir: Path
          ) -> list[Job]:
    """Jobs of at most ``max_group_size`` runs sharing everything but β and seed, all
    starting at ``start`` (a resumed group larger than a lowered ``max_group_size`` splits:
    the user's choice, at the price of float-level differences)."""
    first = members[0]
    copies = _same_model_runs(members, runs_dir)
    members = [r for r in members if r["run_id"] in copies]
    jobs = []
    for part in _chunks(members, grid.max_group_size):
        run_dirs = tuple(str(Path(runs_dir) / r["run_id"]) for r in part)
        jobs.append(Job(group_spec(first, part), first["dataset"], first["split"], run_dirs,
                        start, tuple(copies[r["run_id"]] for r in part),
                        validation=first.get("validation", 0),
                        tensorboard=bool(first.get("tensorboard"))))
    return jobs


def _chunks(items: list, size: int) -> list[list]:
    iterator = iter(items)
    return [chunk for chunk in iter(lambda: list(itertools.islice(iterator, size)), [])]


def _same_model_runs(members: list[dict], runs_dir: Path) -> dict[str, tuple[str, ...]]:
    """run_id of each run to train -> the directories of the runs that copy it.

    Runs of one job that train the same model (``_model_of``) train it once: the first
    trains and the others receive its files.
    """
    by_model: dict[Any, list[str]] = {}
    for r in members:
        by_model.setdefault(_model_of(r), []).append(r["run_id"])
    return {ids[0]: tuple(str(Path(runs_dir) / i) for i in ids[1:])
            for ids in by_model.values()}


def _model_of(run: dict[str, Any]) -> Any:
    """What determines the model a run trains, among runs of one job (split, architecture,
    objective, options and start): its seed under an objective that ignores β (``ae``),
    else the run itself (also when only its id is known: a run directory deleted since)."""
    from benchmark.objectives import get_objective

    if "objective" in run and not get_objective(run["objective"]).uses_beta:
        return run["seed"]
    return run["run_id"]


def run_job(job: Job, device: str, progress: bool = True, threads: int | None = None
            ) -> list[tuple[str, str]]:
    """Train one job, writing checkpoints, history, models and statuses as it goes.

    Each run directory is leased for the job (an flock on ``RUN/.lock``, freed by the OS if
    the process dies): a job whose runs another process is still training, such as a Dask
    task left running on a worker after its client was killed, touches nothing and reports
    its runs as ``busy``."""
    outputs = job.outputs()  # per trained run: its directory, then those of its copies
    dirs = list(dict.fromkeys(itertools.chain.from_iterable(outputs)))
    with contextlib.ExitStack() as leases:
        if not all([_lease(leases, d) for d in dirs]):
            return [(d.name, "busy") for d in dirs]
        if any(_moved_on(d, job.start) for d in dirs):
            return [(d.name, "stale") for d in dirs]
        return _train_job(job, outputs, device, progress, threads)


LEASE = ".lock"  # in a run directory: held while a process trains the run


def _lease(leases: contextlib.ExitStack, run_dir: Path) -> bool:
    """Try to hold the run's lease until ``leases`` closes; whether it is held."""
    with runs_io.writing(run_dir / LEASE, run_dir.name):  # (opened for appending)
        return leases.enter_context(exclusive_lock(run_dir / LEASE))


def _moved_on(run_dir: Path, start: int) -> bool:
    """Whether the run has changed since the grid was planned (another process trained it
    meanwhile): it has finished, or the checkpoint the job would resume from is gone."""
    if runs_io.is_finished(run_dir):
        return True
    return start > 0 and start not in runs_io.checkpoints(run_dir)[0]


def _train_job(job: Job, outputs: list[list[Path]], device: str, progress: bool,
               threads: int | None) -> list[tuple[str, str]]:
    import torch

    from benchmark.trainer import train_group

    if threads:
        torch.set_num_threads(threads)
    images, validation = training_images(job.dataset, job.split, job.validation)
    for d in itertools.chain.from_iterable(outputs):
        runs_io.rewind(d, job.start)
    states = [runs_io.load_checkpoint(dirs[0]) for dirs in outputs] if job.start else None
    histories = [runs_io.read_history(dirs[0], up_to=job.start) for dirs in outputs]
    for dirs, history in zip(outputs, histories, strict=True):
        if not history and job.start >= job.spec.log_every:  # history.csv deleted/emptied
            print(f"rdbench train: warning: {dirs[0] / 'history.csv'} has no rows before "
                  f"iteration {job.start}; the run resumes from its checkpoint, and its "
                  "history starts there", file=sys.stderr)
    for d in itertools.chain.from_iterable(outputs):
        runs_io.write_status(d, "running", job.start)

    def on_log(iteration: int, rows: list[dict[str, float]]) -> None:
        for history, row in zip(histories, rows, strict=True):
            history.append({"iteration": iteration, **row})

    # Every run the job writes, copies included: a kill between a trained run's checkpoint
    # and its copy's must still resume them together (the copy then from the last
    # iteration both have), or the copy would be retrained alone and differ by rounding.
    group = tuple(d.name for dirs in outputs for d in dirs)

    def on_checkpoint(states: list[Any]) -> None:
        for dirs, state, history in zip(outputs, states, histories, strict=True):
            for d in dirs:
                runs_io.save_checkpoint(d, state, history, group)
                if job.tensorboard:
                    runs_io.write_tensorboard(d, history)

    final = train_group(job.spec, images, device=resolve_device(device), states=states,
                        validation=validation, on_log=on_log, on_checkpoint=on_checkpoint,
                        progress=progress)
    return [(d.name, runs_io.finish_run(d, s, h))
            for dirs, s, h in zip(outputs, final, histories, strict=True) for d in dirs]


def training_images(dataset: str, split: str, validation: int) -> tuple[Any, Any]:
    """uint8 (N, H, W, C) images a split trains on, and its held-out validation images
    (None without a validation set): the same rows for every run of the split."""
    import numpy as np

    from imagesets import load_verified
    from imagesets.splits import validation_rows

    data = load_verified(dataset)  # a worker may see another copy (Dask): checked again
    train, held = validation_rows(data.split(split).train, split, validation)
    return (np.ascontiguousarray(data.images[train]),
            np.ascontiguousarray(data.images[held]) if validation else None)


def connect(scheduler: str, timeout: float = 20.0) -> Any:
    """A ``dask.distributed.Client`` of the scheduler at the user's address (never another),
    or one line and exit 2 if it cannot be reached: called before anything is written."""
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=timeout)
    except Exception as e:  # ValueError (address), OSError/TimeoutError (unreachable), ...
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot reach the Dask scheduler at {scheduler!r}: {reason}") from None


def dispatch(jobs: list[Job], devices: list[str], workers: int, backend: str,
             client: Any = None) -> list[tuple[str, str]]:
    """Run jobs with joblib; returns (run_id, status) for every trained run.

    ``client``: the connected Dask client (``connect``) when ``backend == "dask"``; joblib's
    Dask backend uses it as the current client, and the caller closes it."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    results: list[tuple[str, str]] = []
    with tqdm(total=len(jobs), desc="jobs", unit="job", position=0, file=sys.stderr) as bar:
        _run_all(jobs, devices, workers, backend, bar, results)
    return results


def _run_all(jobs: list[Job], devices: list[str], workers: int, backend: str, bar: Any,
             results: list[tuple[str, str]]) -> None:
    """``dispatch``'s loop: ``results`` grows by each job's statuses as it ends."""
    from joblib import Parallel, delayed, parallel_config

    if backend == "dask":
        calls = (delayed(run_job)(job, devices[i % len(devices)], False)
                 for i, job in enumerate(jobs))
        with parallel_config(backend="dask", wait_for_workers_timeout=60):
            for out in Parallel(n_jobs=-1, return_as="generator_unordered")(calls):
                results += out
                bar.update()
    elif workers == 1:
        for i, job in enumerate(jobs):
            results += run_job(job, devices[i % len(devices)], progress=True)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        slots = [devices[i % len(devices)] for i in range(workers)]
        with tempfile.TemporaryDirectory(prefix="rdbench-slots-") as slot_dir:
            calls = (delayed(run_job_in_slot)(job, slot_dir, slots, threads, os.getpid())
                     for job in jobs)
            for out in Parallel(n_jobs=workers, backend="loky",
                                return_as="generator_unordered")(calls):
                results += out
                bar.update()


def run_job_in_slot(job: Job, slot_dir: str, slots: list[str], threads: int, parent: int
                    ) -> list[tuple[str, str]]:
    """``run_job`` on the device of the first free slot (one slot per loky worker), in a
    worker that ends if ``parent`` (the dispatching ``rdbench``) dies: loky would let it
    train on, orphaned, until its job ends.

    Devices go with slots, not with job numbers: handing job i the device i mod n would,
    once jobs differ in length, start a job on a GPU that is still busy while another idles.
    """
    _setup_worker(parent)
    with claim_slot(Path(slot_dir), slots) as i:
        return run_job(job, slots[i], False, threads)


def _setup_worker(parent: int) -> None:
    """In a loky worker, before each job: end the worker when ``parent`` dies (started once),
    and give tqdm a thread lock. tqdm's default is a multiprocessing semaphore, which a worker
    that joblib kills (another job failed) leaks, with a warning on stderr below the error;
    a worker draws no bars."""
    import threading

    from tqdm.auto import tqdm

    exit_with_parent(parent)
    tqdm.set_lock(threading.RLock())


@contextlib.contextmanager
def claim_slot(slot_dir: Path, slots: list[str]) -> Iterator[int]:
    """Hold a slot no one holds (a file ``slot_dir/slot-i`` created exclusively, removed on
    exit), on the device with the fewest slots held; RuntimeError when all are held, which
    dispatch rules out by running at most len(slots) jobs at once. (A worker that dies ends
    the whole dispatch, so a slot it leaves behind is never waited for.)"""
    n = len(slots)
    held = Counter(slots[i] for i in range(n) if (slot_dir / f"slot-{i}").exists())
    for i in sorted(range(n), key=lambda i: (held[slots[i]], i)):
        path = slot_dir / f"slot-{i}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        try:
            yield i
        finally:
            path.unlink(missing_ok=True)
        return
    raise RuntimeError(f"all {n} device slots are busy: more jobs at once than workers")


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
