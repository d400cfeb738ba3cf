"""``rdbench demo``: dataset → small grid → evaluate → report, at CPU scale, in minutes.

The grid is the embedded preset ``benchmark/presets/demo.toml`` (also ``configs/demo.toml``);
the dataset is generated inside the output directory (or reused when a valid one is there).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from importlib import resources
from pathlib import Path

from rdbench.io import (
    InputError,
    atomic_write_text,
    check_output_dir,
    foreign_paths,
    is_leftover,
    json_or_none,
    output_kind,
    unlisted_paths,
)

# Estimator settings sized for a 2-core CPU; `rdbench evaluate` defaults are the paper's.
EVALUATE_ARGS = ["--iwae-samples", "100", "--iwae-subset", "300", "--nn-subset", "2000",
                 "--max-examples", "4096"]
# First line of OUT/demo.toml: how `--force` tells the demo's grid file from a user's.
GRID_HEADER = "# Written by `rdbench demo` (replaced by `rdbench demo --force`: edit a copy).\n"


def demo_grid_text(dataset: Path) -> str:
    """The embedded demo grid, pointed at ``dataset``."""
    text = resources.files("benchmark").joinpath("presets/demo.toml").read_text()
    return text.replace('dataset = "data/tetrominoes"', f'dataset = "{dataset}"')


def main(args: argparse.Namespace) -> int:
    from rdbench.cli import main as rdbench
    from rdbench.device import resolve_device

    out = check_output_dir(args.out, force=args.force)
    resolve_device(args.device)  # a bad device must fail before the dataset is generated
    data_dir, runs_dir, report_dir = out / "data", out / "runs", out / "report"
    if args.force and out.exists():
        check_previous_demo(out)
        _clear_previous_demo(out)  # (under the train lock: not while a train writes there)
    start = time.perf_counter()
    steps = [
        ("dataset", lambda: _dataset(data_dir, rdbench)),
        ("train", lambda: rdbench(["train", str(_grid_file(out, data_dir)), "--out",
                                   str(runs_dir), "--device", args.device])),
        ("evaluate", lambda: rdbench(["evaluate", str(runs_dir), "--device", args.device,
                                      *EVALUATE_ARGS])),
        ("report", lambda: rdbench(["report", str(runs_dir), "--out", str(report_dir),
                                    "--force"])),
    ]
    for i, (name, step) in enumerate(steps, 1):
        print(f"[demo {i}/{len(steps)}] {name} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr)
        code = step()
        if code:
            raise InputError(f"demo step {name!r} failed with exit status {code}")
    minutes = (time.perf_counter() - start) / 60
    print(f"rdbench demo: finished in {minutes:.1f} min. Report: {report_dir / 'index.html'} "
          f"(and {report_dir / 'report.md'})")
    return 0


def _dataset(data_dir: Path, rdbench) -> int:
    import imagesets

    if data_dir.is_dir():
        try:
            if not imagesets.load(data_dir).verify():
                print(f"reusing the dataset in {data_dir}", file=sys.stderr)
                return 0
        except InputError:
            pass
    return rdbench(["data", "generate", "--out", str(data_dir), "--force"])


def _grid_file(out: Path, data_dir: Path) -> Path:
    path = out / "demo.toml"
    atomic_write_text(path, GRID_HEADER + demo_grid_text(data_dir))
    return path


def check_previous_demo(out: Path) -> None:
    """Refuse ``--force`` when an entry the demo would remove or replace is not the demo's.

    ``data/`` must be an rdbench dataset, ``report/`` an rdbench report, ``runs/`` the runs
    of the demo grid only, ``demo.toml`` the demo's grid file, each holding, at every
    depth, only what rdbench wrote there: a user's file is never deleted. Anything else in
    ``out`` is left alone and does not matter.
    """
    problems = [f"{name} ({why})" for name, why in [
        ("data", _not_of_kind(out / "data", "dataset")),
        ("report", _not_of_kind(out / "report", "report")),
        ("runs", _not_demo_runs(out / "runs")),
        ("demo.toml", _not_demo_grid(out / "demo.toml", out / "data"))] if why]
    if problems:
        raise InputError(f"{out} is not an earlier demo's directory, --force would replace "
                         f"what the demo did not write: {'; '.join(problems)}")


def _foreign_in(path: Path, kind: str) -> str | None:
    """The first path in ``path`` rdbench did not write, "" when ``path`` is not an rdbench
    output of ``kind`` (or of a sub-kind, such as ``kp-objectives`` of ``kp``) at all, or
    None when it is one, intact, or is empty or absent."""
    if _absent_or_empty(path):
        return None
    found = output_kind(path) if path.is_dir() and not path.is_symlink() else None
    if found is None or not (found == kind or found.startswith(f"{kind}-")):
        return ""
    extra = foreign_paths(path)
    return extra[0] if extra else None


def _not_of_kind(path: Path, kind: str) -> str | None:
    """Why ``path`` is not an intact rdbench output of ``kind``, or None when it is."""
    extra = _foreign_in(path, kind)
    if extra is None:
        return None
    return f"holds {extra}, which rdbench did not write" if extra else f"not an rdbench {kind}"


# What rdbench writes in a run directory (benchmark/runs.py, evaluate, the train lease).
RUN_FILES = ("config.json", "status.json", "history.csv", "checkpoint.pt",
             "checkpoint.prev.pt", "model.pt", "model_best.pt", "metrics*.json", ".lock",
             "tb/events.out.tfevents.*", "tb/*/events.out.tfevents.*", "tb/.rdbench-output")


def _not_demo_runs(runs: Path) -> str | None:
    """Why ``runs`` is not (only) the demo grid's runs directory, or None when it is."""
    if _absent_or_empty(runs):
        return None
    if runs.is_symlink() or not runs.is_dir() or not (runs / "grids").is_dir():
        return "not an rdbench runs directory"  # (grids/<name>.json marks one)
    return next(filter(None, map(_runs_entry_problem, sorted(runs.iterdir()))), None)


def _runs_entry_problem(path: Path) -> str | None:
    """Why ``path``, in the runs directory, is not what rdbench writes there, or None."""
    if _leftover(path):
        return None
    if path.is_symlink():
        return f"holds {path.name}, a symbolic link"
    if path.name == "grids":
        return _grids_problem(path)
    if path.name == "neighbours":
        return _unlisted(path, ("*.npz",))
    if path.name in ("report", "kp"):
        return _outputs_problem(path)
    if _is_run(path):
        return _unlisted(path, RUN_FILES)
    return f"holds {path.name}, which is not a run"


def _unlisted(path: Path, patterns: tuple[str, ...]) -> str | None:
    extra = unlisted_paths(path, patterns)
    return f"holds {path.name}/{extra[0]}, which rdbench did not write there" if extra \
        else None


def _grids_problem(grids: Path) -> str | None:
    """grids/ holds the demo grid's file, the train lock and rdbench's leftovers only."""
    extra = unlisted_paths(grids, (f"{_demo_grid_name()}.json", ".lock"))
    if any(name.endswith(".json") for name in extra):
        return "holds runs of other grids than the demo's"
    return f"holds grids/{extra[0]}, which rdbench did not write there" if extra else None


def _outputs_problem(path: Path) -> str | None:
    """``report`` (an rdbench report) or ``kp`` (only rdbench kp analyses) written into
    the runs, holding nothing rdbench did not write there."""
    if path.name == "report":
        outputs = [(path, "report")]
    elif path.is_dir():
        outputs = [(p, "kp") for p in sorted(path.iterdir()) if not _leftover(p)]
    else:
        outputs = [(path, "kp")]
    for output, kind in outputs:
        extra = _foreign_in(output, kind)
        if extra == "":
            return f"holds {path.name}, which is not a run"
        if extra:
            rel = output.relative_to(path.parent).as_posix()
            return f"holds {rel}/{extra}, which rdbench did not write there"
    return None


def _is_run(path: Path) -> bool:
    """A run directory: its config.json names it (``run_id`` = the directory's name)."""
    config = json_or_none(path / "config.json")
    return isinstance(config, dict) and config.get("run_id") == path.name


def _leftover(path: Path) -> bool:
    """What a killed rdbench process left (its temporary file or staged directory, see
    :func:`rdbench.io.is_leftover`; never a user's entry that only has such a name), or
    an empty directory (a run killed before its config.json was written)."""
    return is_leftover(path) or (path.is_dir() and not path.is_symlink()
                                 and not any(path.iterdir()))


def _absent_or_empty(path: Path) -> bool:
    """Nothing there: no such path, or an empty directory."""
    if path.is_symlink():
        return False
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _not_demo_grid(path: Path, data_dir: Path) -> str | None:
    if path.is_symlink():
        return "a symbolic link"
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return "not the demo's grid file"
    legacy = text == demo_grid_text(data_dir)  # written before GRID_HEADER existed
    return None if text.startswith(GRID_HEADER) or legacy else "not the demo's grid file"


def _demo_grid_name() -> str:
    import tomllib

    return tomllib.loads(demo_grid_text(Path("data")))["name"]


def _clear_previous_demo(out: Path) -> None:
    """With --force, remove what an earlier demo wrote (a valid dataset is kept and reused).

    Only the demo's own entries are touched, never anything else in ``out``; the caller
    has checked with :func:`check_previous_demo` that they are the demo's.
    """
    import shutil

    from benchmark.train import runs_lock

    lock = out / "runs" / "grids" / ".lock"
    with runs_lock(lock) if lock.parent.is_dir() else contextlib.nullcontext():
        shutil.rmtree(out / "runs", ignore_errors=True)
    shutil.rmtree(out / "report", ignore_errors=True)
    (out / "demo.toml").unlink(missing_ok=True)
