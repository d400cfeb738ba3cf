"""``rdbench demo``: dataset → small grid → evaluate → report, at CPU scale, in minutes.

The grid is the embedded preset ``benchmark/presets/demo.toml`` (also ``configs/demo.toml``);
the dataset is generated inside the output directory (or reused when a valid one is there).
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from rdbench.io import InputError, atomic_write_text, check_output_dir

# Estimator settings sized for a 2-core CPU; `rdbench evaluate` defaults are the paper's.
EVALUATE_ARGS = ["--iwae-samples", "100", "--iwae-subset", "300", "--nn-subset", "2000",
                 "--max-examples", "4096"]


def demo_grid_text(dataset: Path) -> str:
    """The embedded demo grid, pointed at ``dataset``."""
    text = resources.files("benchmark").joinpath("presets/demo.toml").read_text()
    return text.replace('dataset = "data/tetrominoes"', f'dataset = "{dataset}"')


def main(args: argparse.Namespace) -> int:
    from rdbench.cli import main as rdbench

    out = check_output_dir(args.out, force=args.force)
    data_dir, runs_dir, report_dir = out / "data", out / "runs", out / "report"
    if args.force and out.exists():
        _clear_previous_demo(out)
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
    atomic_write_text(path, demo_grid_text(data_dir))
    return path


def _clear_previous_demo(out: Path) -> None:
    """With --force, remove what an earlier demo wrote (a valid dataset is kept and reused).

    Only the demo's own entries are touched, never anything else in ``out``.
    """
    import shutil

    shutil.rmtree(out / "runs", ignore_errors=True)
    shutil.rmtree(out / "report", ignore_errors=True)
    (out / "demo.toml").unlink(missing_ok=True)
