"""Runs on disk (SPEC §4): one directory per trained model, plain files, atomic writes.

``RUNS_DIR/<run_id>/``:

- ``config.json``   the resolved run config (see ``benchmark.config.expand``);
- ``status.json``   ``{"status": pending|running|done|failed, "reason", "iteration"}``;
- ``history.csv``   ``iteration,loss,distortion,rate[,...]`` every ``log_every`` iterations;
- ``checkpoint.pt`` model, Adam moments and iteration, every ``checkpoint_every`` iterations,
  and ``checkpoint.prev.pt``, the one before (both removed once the run is finished);
- ``model.pt``      the final state dict of ``build_model(...)``;
- ``metrics.json``  written by ``rdbench evaluate``.

Every file is replaced atomically, so a process killed at any moment leaves either the old
or the new version of each file, never a torn one. The runs of a group checkpoint one after
another, so a kill can leave them at two iterations; keeping the previous checkpoint lets
them all resume at the last iteration every run has (``benchmark.runner.plan``), in the same
group as before, and end with the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rdbench.files import NO_ROOM  # (ENOSPC, EDQUOT, EROFS: the CLI's one line)
from rdbench.io import (
    InputError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    is_leftover,
    read_json,
    staged_directory,
)

STATUSES = ("pending", "running", "done", "failed")
FINISHED = ("done", "failed")  # a run in one of these is never trained again


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run directories below ``runs_dir`` (those holding a ``config.json``), sorted by id.

    A run directory or ``config.json`` that is a symbolic link is skipped, with a warning
    (once per process): a run is read, and written, only inside its runs directory."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs directory not found: {runs_dir}")
    found = []
    for config in sorted(runs_dir.glob("*/config.json")):
        link = next((p for p in (config.parent, config) if p.is_symlink()), None)
        if link is None:
            found.append(config.parent)
        elif link not in _WARNED:
            _WARNED.add(link)
            print(f"rdbench: warning: skipped {link}: a symbolic link (runs are read only "
                  "from inside the runs directory)", file=sys.stderr)
    return found


_WARNED: set[Path] = set()  # links find_runs has warned about


def read_config(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "config.json")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return {"status": "pending", "reason": None, "iteration": 0}
    try:
        status = read_json(path)
    except OSError as e:  # unreadable, a directory...
        raise InputError(f"unreadable {path} ({e.strerror or e}); make it readable, or "
                         "delete the run directory to train the run again") from None
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        raise InputError(f"{path} is not a run status (expected a JSON object with \"status\" "
                         f"one of {', '.join(STATUSES)}); restore it, or delete the run "
                         "directory to train the run again")
    return status


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run has ended (``FINISHED``); a run without a status is pending."""
    return read_status(run_dir)["status"] in FINISHED


def write_status(run_dir: Path, status: str, iteration: int, reason: str | None = None,
                 **extra: Any) -> None:
    """``status.json``; ``extra``: ``stopped`` (early stopping's iteration) and
    ``best_iteration`` (of ``model_best.pt``) for a run with a validation set."""
    assert status in STATUSES, status
    with writing(run_dir / "status.json", run_dir.name):
        atomic_write_json(run_dir / "status.json",
                          {"status": status, "reason": reason, "iteration": int(iteration),
                           **extra})


class RunWriteError(InputError):
    """A run file could not be written, for a reason other than a full disk, a full quota or
    a read-only file system (those stay OSErrors: ``rdbench.cli`` reports them)."""


@contextlib.contextmanager
def writing(path: Path, run: str | None = None) -> Iterator[None]:
    """Let a failed write of ``path`` (a file of the run ``run``, if any) end as one line.

    A full disk, quota or read-only file system stays the OSError, named ``path`` if it
    names no file, for the CLI to report (exit status 1); any other OSError (permission
    denied, a file too large) becomes a :class:`RunWriteError`. ``torch.save`` reports a
    write that stopped short as a RuntimeError; the OSError behind it is what counts. Both
    pickle: they cross from a loky worker to ``rdbench train``, which adds what was kept.
    """
    try:
        yield
    except (OSError, RuntimeError) as e:
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:  # a RuntimeError that is not a failed write: a bug
            raise
        if cause.filename is None:
            cause.filename = str(path)
        if cause.errno in NO_ROOM:
            raise cause from None
        of_run = f" (run {run})" if run else ""
        raise RunWriteError(f"cannot write {path}{of_run}: {cause.strerror or cause}") from None


def create_run(runs_dir: Path, config: dict[str, Any]) -> Path:
    """Make a run's directory with its ``config.json`` (kept if it already exists); a
    finished run loses checkpoints a kill inside ``finish_run`` left behind."""
    run_dir = Path(runs_dir) / config["run_id"]
    with writing(run_dir / "config.json", run_dir.name):
        run_dir.mkdir(parents=True, exist_ok=True)
        fresh = not (run_dir / "config.json").exists()
        if fresh:
            atomic_write_json(run_dir / "config.json", config)
    if fresh:
        write_status(run_dir, "pending", 0)
    elif is_finished(run_dir):
        _remove(run_dir, CHECKPOINTS)
    return run_dir


def _remove(run_dir: Path, names: tuple[str, ...]) -> None:
    for name in names:
        with writing(run_dir / name, run_dir.name):
            (run_dir / name).unlink(missing_ok=True)


def read_history(run_dir: Path, up_to: int | None = None) -> list[dict[str, float]]:
    """Rows of ``history.csv`` (iterations ≤ ``up_to``: a resumed run drops later rows)."""
    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        for row in rows:
            row["iteration"] = int(row["iteration"])
    except (ValueError, TypeError, KeyError) as e:  # a hand-edited or foreign file
        raise InputError(f"unreadable {path} ({type(e).__name__}: {e}); restore it, or "
                         "delete the run directory to train the run again") from None
    except OSError as e:  # unreadable, a directory...
        raise InputError(f"unreadable {path} ({e.strerror or e}); make it readable, or "
                         "delete the run directory to train the run again") from None
    return [r for r in rows if up_to is None or r["iteration"] <= up_to]


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    columns = ["iteration"] + [k for k in rows[0] if k != "iteration"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with writing(run_dir / "history.csv", run_dir.name):
        atomic_write_text(run_dir / "history.csv", buffer.getvalue())


CHECKPOINTS = ("checkpoint.pt", "checkpoint.prev.pt")  # the latest, the one before


def save_checkpoint(run_dir: Path, state: Any, history: list[dict[str, float]],
                    group: tuple[str, ...] = ()) -> None:
    """Persist a :class:`~benchmark.trainer.RunState`, the run ids of the job writing it
    (``group``) and the history up to its iteration; the checkpoint it replaces becomes
    ``checkpoint.prev.pt``."""
    write_history(run_dir, history)
    latest, previous = (run_dir / name for name in CHECKPOINTS)
    with writing(latest, run_dir.name):
        if latest.exists():
            os.replace(latest, previous)
        atomic_torch_save(latest, {**state.to_dict(), "group": list(group)})
    write_status(run_dir, "running", state.iteration)


def checkpoints(run_dir: Path) -> tuple[dict[int, Path], tuple[str, ...]]:
    """(iteration -> file the run can resume from, with 0 (a fresh start) always; the run
    ids of the job that wrote its latest checkpoint, () if it has none)."""
    found: dict[int, Path] = {0: Path(run_dir) / CHECKPOINTS[0]}
    group: tuple[str, ...] = ()
    for path in (Path(run_dir) / name for name in reversed(CHECKPOINTS)):
        if path.exists():
            payload = _read_checkpoint(path, mmap=True)  # reads the fields, copies no tensor
            found[payload["iteration"]] = path
            group = tuple(payload.get("group", ()))
    return found, group


def rewind(run_dir: Path, iteration: int) -> None:
    """Leave the run's checkpoint at ``iteration`` as ``checkpoint.pt`` and drop any other
    (none at all for 0), so that the next save rotates from a consistent state."""
    run_dir = Path(run_dir)
    # leftovers of atomic writes a kill interrupted (rdbench's own signed temporary names,
    # never a user's file; the caller holds the run's lease: none is live)
    _remove(run_dir, tuple(p.name for p in run_dir.glob(".*") if is_leftover(p)))
    keep = checkpoints(run_dir)[0][iteration] if iteration else None
    latest, previous = (run_dir / name for name in CHECKPOINTS)
    if keep == previous:
        with writing(latest, run_dir.name):
            os.replace(previous, latest)
    _remove(run_dir, CHECKPOINTS if keep is None else CHECKPOINTS[1:])


def load_checkpoint(run_dir: Path) -> Any | None:
    """The run's last :class:`~benchmark.trainer.RunState`, or None if it has none."""
    from benchmark.trainer import RunState

    path = Path(run_dir) / CHECKPOINTS[0]
    if not path.exists():
        return None
    return RunState.from_dict(_read_checkpoint(path))


def _read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's payload (``save_checkpoint``), checked to be one: one line otherwise."""
    payload = _torch_load(path, "checkpoint", mmap)
    group = payload.get("group", []) if isinstance(payload, dict) else None
    if not (isinstance(payload, dict) and type(payload.get("iteration")) is int
            and payload["iteration"] >= 0 and isinstance(payload.get("model"), dict)
            and isinstance(payload.get("optimizer"), dict) and isinstance(group, list)
            and all(isinstance(g, str) for g in group)):
        raise InputError(f"unreadable checkpoint {path} (not a checkpoint: expected a dict "
                         "with iteration, model and optimizer); restore it, or delete it to "
                         "resume from an earlier checkpoint or the start")
    return payload


MODEL_FILES = {"final": "model.pt", "best": "model_best.pt"}  # --checkpoint final|best


def finish_run(run_dir: Path, state: Any, history: list[dict[str, float]]) -> str:
    """Write ``model.pt`` (and with a validation set ``model_best.pt``: the weights of the
    best validation loss), the history and the final status; drop the checkpoints."""
    write_history(run_dir, history)
    with writing(run_dir / "model.pt", run_dir.name):
        atomic_torch_save(run_dir / "model.pt", state.model)
    extra = {}
    if getattr(state, "best", None) is not None:
        with writing(run_dir / MODEL_FILES["best"], run_dir.name):
            atomic_torch_save(run_dir / MODEL_FILES["best"], state.best["model"])
        extra = {"best_iteration": int(state.best["iteration"]),
                 "best_validation_loss": float(state.best["value"]),
                 "stopped": state.stopped}
    status = "failed" if state.failed else "done"
    write_status(run_dir, status, state.iteration, state.failed, **extra)
    _remove(run_dir, CHECKPOINTS)
    return status


def write_tensorboard(run_dir: Path, history: list[dict[str, float]]) -> None:
    """``RUN/tb/``: the history as TensorBoard scalars (``train/<key>``, ``validation/<key>``
    for ``val_<key>``), written from the whole history into a staged directory that
    replaces the previous one, so a resumed run's events are those of an uninterrupted one."""
    import math

    from torch.utils.tensorboard import SummaryWriter

    with writing(run_dir / "tb", run_dir.name), staged_directory(
            run_dir / "tb", force=True, kind="tensorboard") as tmp:
        writer = SummaryWriter(log_dir=str(tmp), flush_secs=3600)
        for row in history:
            for key, value in row.items():
                if key == "iteration" or not math.isfinite(value):
                    continue
                tag = f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                writer.add_scalar(tag, value, int(row["iteration"]))
        writer.close()


def load_model(run_dir: str | Path, device: Any = "cpu", checkpoint: str = "final") -> Any:
    """The trained model of a run (``weights_only=True``), in eval mode, on ``device``;
    ``checkpoint`` ``"best"``: the weights of its best validation loss (``model_best.pt``)."""
    from benchmark.grid import build_run_model

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = run_dir / MODEL_FILES[checkpoint]
    if not path.exists():
        why = "; it was trained without a validation set" if checkpoint == "best" else ""
        raise InputError(f"run {run_dir.name} has no {path.name} (status: "
                         f"{read_status(run_dir)['status']}{why})")
    model = build_run_model(config)
    state = _torch_load(path, "model")
    try:
        model.load_state_dict(state)
    except Exception as e:  # not a state dict of this architecture (or not a state dict)
        raise InputError(f"unreadable model {path} ({_load_failure(e)})") from None
    return model.to(device).eval()


def _torch_load(path: Path, what: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the cpu; a failure is one line,
    ``unreadable WHAT PATH (reason)``, which never repeats torch's advice to load with
    ``weights_only=False``: that runs whatever code a foreign file holds."""
    import torch

    try:
        with open(path, "rb") as f:  # torch.save writes a zip archive; for anything else
            if not zipfile.is_zipfile(f):  # mmap's error would advise saving it again
                raise ValueError("not a file written by torch.save")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a torn file cannot happen (atomic writes), a foreign one can
        raise InputError(f"unreadable {what} {path} ({_load_failure(e)})") from None


def _load_failure(e: Exception) -> str:
    """What a failed ``torch.load``/``load_state_dict`` says is wrong, in one sentence: for
    a weights-only refusal, the unpickler's, without the advice torch puts around it."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e).partition("WeightsUnpickler error:")[2] or str(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict for VAE:"
        lines[0] += " " + lines[1]
    reason = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not reason or "weights_only" in reason:
        return type(e).__name__
    return reason if len(reason) <= 200 else reason[:199] + "…"
