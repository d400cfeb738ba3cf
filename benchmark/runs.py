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

import csv
import io
import os
from pathlib import Path
from typing import Any

from rdbench.io import (
    InputError,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    read_json,
)

STATUSES = ("pending", "running", "done", "failed")
FINISHED = ("done", "failed")  # a run in one of these is never trained again


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run directories below ``runs_dir`` (those holding a ``config.json``), sorted by id."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise InputError(f"runs directory not found: {runs_dir}")
    return sorted(p.parent for p in runs_dir.glob("*/config.json"))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "config.json")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return {"status": "pending", "reason": None, "iteration": 0}
    status = read_json(path)
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        raise InputError(f"{path} is not a run status (expected a JSON object with \"status\" "
                         f"one of {', '.join(STATUSES)}); restore it, or delete the run "
                         "directory to train the run again")
    return status


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run has ended (``FINISHED``); a run without a status is pending."""
    return read_status(run_dir)["status"] in FINISHED


def write_status(run_dir: Path, status: str, iteration: int, reason: str | None = None) -> None:
    assert status in STATUSES, status
    atomic_write_json(run_dir / "status.json",
                      {"status": status, "reason": reason, "iteration": int(iteration)})


def create_run(runs_dir: Path, config: dict[str, Any]) -> Path:
    """Make a run's directory with its ``config.json`` (kept if it already exists); a
    finished run loses checkpoints a kill inside ``finish_run`` left behind."""
    run_dir = Path(runs_dir) / config["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.json").exists():
        atomic_write_json(run_dir / "config.json", config)
        write_status(run_dir, "pending", 0)
    elif is_finished(run_dir):
        for name in CHECKPOINTS:
            (run_dir / name).unlink(missing_ok=True)
    return run_dir


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
    return [r for r in rows if up_to is None or r["iteration"] <= up_to]


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    columns = ["iteration"] + [k for k in rows[0] if k != "iteration"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "history.csv", buffer.getvalue())


CHECKPOINTS = ("checkpoint.pt", "checkpoint.prev.pt")  # the latest, the one before


def save_checkpoint(run_dir: Path, state: Any, history: list[dict[str, float]],
                    group: tuple[str, ...] = ()) -> None:
    """Persist a :class:`~benchmark.trainer.RunState`, the run ids of the job writing it
    (``group``) and the history up to its iteration; the checkpoint it replaces becomes
    ``checkpoint.prev.pt``."""
    write_history(run_dir, history)
    latest, previous = (run_dir / name for name in CHECKPOINTS)
    if latest.exists():
        os.replace(latest, previous)
    atomic_torch_save(latest, {**state.to_dict(), "group": list(group)})
    write_status(run_dir, "running", state.iteration)


def checkpoints(run_dir: Path) -> tuple[dict[int, Path], tuple[str, ...]]:
    """(iteration -> file the run can resume from, with 0 (a fresh start) always; the run
    ids of the job that wrote its latest checkpoint, () if it has none)."""
    import torch

    found: dict[int, Path] = {0: Path(run_dir) / CHECKPOINTS[0]}
    group: tuple[str, ...] = ()
    for path in (Path(run_dir) / name for name in reversed(CHECKPOINTS)):
        if path.exists():
            try:  # mmap: reads the header fields, copies no tensor
                payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # a torn file cannot happen (atomic), a foreign one can
                raise InputError(f"unreadable checkpoint {path}: {e}") from None
            found[int(payload["iteration"])] = path
            group = tuple(payload.get("group", ()))
    return found, group


def rewind(run_dir: Path, iteration: int) -> None:
    """Leave the run's checkpoint at ``iteration`` as ``checkpoint.pt`` and drop any other
    (none at all for 0), so that the next save rotates from a consistent state."""
    run_dir = Path(run_dir)
    for leftover in run_dir.glob(".*.tmp"):  # of atomic writes a kill interrupted (the
        leftover.unlink(missing_ok=True)     # caller holds the run's lease: none is live)
    keep = checkpoints(run_dir)[0][iteration] if iteration else None
    latest, previous = (run_dir / name for name in CHECKPOINTS)
    if keep == previous:
        os.replace(previous, latest)
    for path in (latest, previous):
        if path.exists() and (keep is None or path != latest):
            path.unlink()


def load_checkpoint(run_dir: Path) -> Any | None:
    """The run's last :class:`~benchmark.trainer.RunState`, or None if it has none."""
    import torch

    from benchmark.trainer import RunState

    path = Path(run_dir) / CHECKPOINTS[0]
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn file cannot happen (atomic), a foreign one can
        raise InputError(f"unreadable checkpoint {path}: {e}") from None
    return RunState.from_dict(payload)


def finish_run(run_dir: Path, state: Any, history: list[dict[str, float]]) -> str:
    """Write ``model.pt``, the history and the final status; drop the checkpoint."""
    write_history(run_dir, history)
    atomic_torch_save(run_dir / "model.pt", state.model)
    status = "failed" if state.failed else "done"
    write_status(run_dir, status, state.iteration, state.failed)
    for name in CHECKPOINTS:
        (run_dir / name).unlink(missing_ok=True)
    return status


def load_model(run_dir: str | Path, device: Any = "cpu") -> Any:
    """The trained model of a run (``weights_only=True``), in eval mode, on ``device``."""
    import torch

    from benchmark.objectives import build_objective_model

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = run_dir / "model.pt"
    if not path.exists():
        raise InputError(f"run {run_dir.name} has no model.pt (status: "
                         f"{read_status(run_dir)['status']})")
    model = build_objective_model(config["objective"], config["architecture"],
                                  config["latent_dim"], config["objective_options"])
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # not a state dict of this architecture (or not a state dict)
        raise InputError(f"unreadable model {path}: {e}".splitlines()[0]) from None
    return model.to(device).eval()

