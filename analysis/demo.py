"""``rdbench demo``: dataset → small grid → evaluate → report, at CPU scale, in minutes.

The grid is the embedded preset ``benchmark/presets/demo.toml`` (also ``configs/demo.toml``);
the dataset is generated inside the output directory (or reused when a valid one is there).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from importlib import resources
from pathlib import Path

from rdbench.io import (
    InputError,
    atomic_write_text,
    check_output_dir,
    foreign_entries,
    json_or_none,
    output_kind,
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
    import tetrominoes

    if data_dir.is_dir():
        try:
            if not tetrominoes.load(data_dir).verify():
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
    of the demo grid only, ``demo.toml`` the demo's grid file: a user's file of the same
    name is never deleted. Anything else in ``out`` is left alone and does not matter.
    """
    problems = [f"{name} ({why})" for name, why in [
        ("data", _not_of_kind(out / "data", "dataset")),
        ("report", _not_of_kind(out / "report", "report")),
        ("runs", _not_demo_runs(out / "runs")),
        ("demo.toml", _not_demo_grid(out / "demo.toml", out / "data"))] if why]
    if problems:
        raise InputError(f"{out} is not an earlier demo's directory, --force would replace "
                         f"what the demo did not write: {'; '.join(problems)}")


def _not_of_kind(path: Path, kind: str) -> str | None:
    """Why ``path`` is not an intact rdbench output of ``kind`` (or of a sub-kind, such as
    ``kp-objectives`` of ``kp``), or None when it is, is empty or is absent."""
    if _absent_or_empty(path):
        return None
    found = output_kind(path) if path.is_dir() else None
    if found is None or not (found == kind or found.startswith(f"{kind}-")):
        return f"not an rdbench {kind}"
    extra = foreign_entries(path)
    return f"holds {extra[0]}, which rdbench did not write" if extra else None


def _not_demo_runs(runs: Path) -> str | None:
    """Why ``runs`` is not (only) the demo grid's runs directory, or None when it is."""
    if _absent_or_empty(runs):
        return None
    grids = runs / "grids"  # benchmark.train's marker: RUNS_DIR/grids/<name>.json
    if not runs.is_dir() or not grids.is_dir():
        return "not an rdbench runs directory"
    if {p.name for p in grids.iterdir() if not _leftover(p)} - {f"{_demo_grid_name()}.json"}:
        return "holds runs of other grids than the demo's"
    foreign = [p.name for p in runs.iterdir() if p.name not in ("grids", "neighbours")
               and not _is_run(p) and not _leftover(p) and not _rdbench_outputs(p)]
    return f"holds {foreign[0]}, which is not a run" if foreign else None


_DEBRIS = re.compile(r"^\..+\.(tmp|partial|old-[0-9a-f]+)$|^\.lock$")  # rdbench's own


def _is_run(path: Path) -> bool:
    """A run directory: its config.json names it (``run_id`` = the directory's name)."""
    config = json_or_none(path / "config.json")
    return isinstance(config, dict) and config.get("run_id") == path.name


def _leftover(path: Path) -> bool:
    """A temporary entry of a killed atomic write or staged output (``.NAME.<hex>.tmp``,
    ``.partial``, ``.old-<hex>``), the train lock, or a run directory killed before its
    config.json was written: rdbench's own debris."""
    return bool(_DEBRIS.match(path.name)) or _absent_or_empty(path)


def _absent_or_empty(path: Path) -> bool:
    """Nothing there: no such path, or an empty directory."""
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _rdbench_outputs(path: Path) -> bool:
    """``report`` (an rdbench report) or ``kp`` (only rdbench kp analyses) written into the
    runs, holding nothing rdbench did not write there."""
    if path.name == "report":
        return _not_of_kind(path, "report") is None
    if path.name == "kp" and path.is_dir():
        return all(_leftover(p) or _not_of_kind(p, "kp") is None for p in path.iterdir())
    return False


def _not_demo_grid(path: Path, data_dir: Path) -> str | None:
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
