"""The ``--force`` promise as a property (issue #13): whatever a user keeps inside or beside
an rdbench output, writing that output again with ``--force`` either refuses (one
:class:`InputError`, nothing touched) or succeeds, and every file of the user's is still
there, byte for byte.

Random user trees (seeded): files and nested directories whose names collide with
rdbench's own (``index.html``, ``figures/x.png``, ``splits/y.npz``, the marker's name,
look-alikes of its temporary files and staged directories) and symlinks to files outside,
put inside or beside a dataset, a report, the kp analyses, a report from before the
marker, a runs directory, a demo directory, a bench result and a figure. The outputs are
built with the staging functions directly (no training), so hundreds of cases take seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from analysis import demo
from rdbench.io import (
    FIGURE_METADATA,
    InputError,
    atomic_write_bytes,
    atomic_write_text,
    check_bench_output,
    check_figure_output,
    check_output_dir,
    report_bench_result,
    staged_directory,
)

CASES_PER_KIND = 40

# What each kind of output holds (written by the staging functions, as the commands do).
_FILES = {
    "dataset": ("images.npy", "factors.csv", "splits/random.npz", "splits/cv-16384.npz",
                "preview.png", "manifest.json"),
    "report": ("runs.csv", "summary.csv", "summary.md", "index.html", "report.md",
               "figures/rd_random_mlp1.png", "figures/rd_random_mlp1.pdf"),
    "kp-objectives": ("objectives.csv", "objectives_summary.csv", "objectives.png"),
    "kp-jacobian": ("jacobian.csv", "jacobian_summary.csv", "jacobian_matrices.npz"),
    "kp-uniqueness": ("config.json", "decoder_std.csv", "decoder-std-0.05/trials.csv",
                      "decoder-std-0.05/summary.md"),
}
# Names a user might pick that rdbench also uses or imitates.
_NAMES = ("index.html", "report.md", "summary.csv", "notes.md", "thesis.tex", "config.json",
          "manifest.json", ".rdbench-output", ".lock", "model.pt", "x.png", "y.npz",
          ".x.1234abcd5678.tmp", ".out.0123456789ab.partial", ".report.old-0123456789ab",
          ".index.html.cafebabe1234.tmp", "events.out.tfevents.1")
_DIRS = ("figures", "splits", "photos", "notes", "tb", "decoder-std-0.05", "kp", "grids",
         ".out.0123456789ab.partial", "run1", "report", "runs", "data")


def _write_output(target: Path, kind: str, force: bool, text: str) -> None:
    with staged_directory(target, force, kind=kind) as tmp:
        for name in _FILES[kind]:
            atomic_write_text(tmp / name, text)
        if kind == "dataset":
            atomic_write_text(tmp / "manifest.json", json.dumps({
                "generator": "rdbench tetrominoes", "format_version": 1,
                "files": {n: text for n in _FILES[kind] if n != "manifest.json"}}))


def _legacy_report(target: Path) -> None:
    """A report written before the marker existed."""
    for name in _FILES["report"]:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text("old")


# ---------------------------------------------------------------- user trees
def _user_tree(rng: random.Random, base: Path, outside: Path, skip: Callable[[str], bool],
               ) -> dict[Path, bytes | str]:
    """Add a random tree of the user's below ``base`` or one of its directories (never over
    an existing entry, nor at a path ``skip`` declines); returns {path: content} (for a
    symlink: its target's path)."""
    made: dict[Path, bytes | str] = {}
    for _ in range(rng.randint(0, 4)):
        start = rng.choice([base, *(p for p in sorted(base.rglob("*"))
                                    if p.is_dir() and not p.is_symlink())])
        parts = [rng.choice(_DIRS) for _ in range(rng.randint(0, 2))] + [rng.choice(_NAMES)]
        path = start.joinpath(*parts)
        if skip(path.relative_to(base).as_posix()) or path.exists() or path.is_symlink() \
                or any(p.is_symlink() or p.exists() and not p.is_dir()
                       for p in path.parents if start in p.parents or p == start):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if rng.random() < 0.2:
            secret = outside / f"secret{len(list(outside.iterdir()))}"
            secret.write_bytes(rng.randbytes(8))
            path.symlink_to(secret)
            made[path] = str(secret)
        else:
            made[path] = rng.randbytes(rng.randint(0, 16))
            path.write_bytes(made[path])
    return made


def _intact(made: dict[Path, bytes | str]) -> list[str]:
    """The user's entries that are missing or changed."""
    bad = []
    for path, content in made.items():
        if isinstance(content, str):
            ok = path.is_symlink() and str(path.readlink()) == content and Path(content).exists()
        else:
            ok = path.is_file() and not path.is_symlink() and path.read_bytes() == content
        if not ok:
            bad.append(str(path))
    return bad


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


# ---------------------------------------------------------------- each kind: build, write again
def _directory_case(kind: str) -> tuple[Callable, Callable, Callable[[str], bool]]:
    def build(out: Path) -> Path:
        if kind == "legacy-report":
            _legacy_report(out)
        else:
            _write_output(out, kind, False, "old")
        return out

    def write(out: Path) -> None:
        _write_output(out, "report" if kind == "legacy-report" else kind, True, "new")

    def skip(rel: str) -> bool:  # by design: in an output from before the marker, a file
        return kind == "legacy-report" and rel.startswith("figures/") \
            and rel.endswith((".png", ".pdf"))  # named as the kind names it is taken for its

    return build, write, skip


def _runs_case() -> tuple[Callable, Callable, Callable[[str], bool]]:
    """A runs directory: `train --force` writes into it (deleting nothing), `report --force`
    replaces RUNS/report only."""
    def build(out: Path) -> Path:
        (out / "grids").mkdir(parents=True)
        (out / "grids" / "g.json").write_text("{}")
        (out / "run1").mkdir()
        (out / "run1" / "config.json").write_text(json.dumps({"run_id": "run1"}))
        _write_output(out / "report", "report", False, "old")
        return out

    def write(out: Path) -> None:
        check_output_dir(out, force=True)
        _write_output(out / "report", "report", True, "new")

    return build, write, lambda rel: False


def _demo_case() -> tuple[Callable, Callable, Callable[[str], bool]]:
    def build(out: Path) -> Path:
        (out / "runs" / "grids").mkdir(parents=True)
        (out / "runs" / "grids" / f"{demo._demo_grid_name()}.json").write_text("{}")
        (out / "runs" / "run1").mkdir()
        (out / "runs" / "run1" / "config.json").write_text(json.dumps({"run_id": "run1"}))
        (out / "runs" / "run1" / "model.pt").write_text("weights")
        _write_output(out / "report", "report", False, "old")
        _write_output(out / "data", "dataset", False, "old")
        demo._grid_file(out, out / "data")
        return out

    def write(out: Path) -> None:
        demo.check_previous_demo(out)
        demo._clear_previous_demo(out)
        _write_output(out / "report", "report", False, "new")

    # by design, a file in a run directory named as rdbench names the run's files
    # (model.pt, tb/events.out.tfevents.*) is taken for the run's
    return build, write, _a_run_file


def _a_run_file(rel: str) -> bool:
    parts = rel.split("/")
    if parts[:2] != ["runs", "run1"]:
        return False
    return any(len(p.split("/")) == len(parts) - 2
               and all(map(fnmatchcase, parts[2:], p.split("/"))) for p in demo.RUN_FILES)


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """What is written where is the question here, not durability: no flush to disk."""
    import os

    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def rdbench_png(tmp_path_factory) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path_factory.mktemp("figure") / "f.png"
    fig, ax = plt.subplots(figsize=(1, 1))
    fig.savefig(path, metadata=FIGURE_METADATA)
    plt.close(fig)
    return path.read_bytes()


def _file_case(kind: str, png: bytes) -> tuple[Callable, Callable, Callable[[str], bool]]:
    """A bench result or a figure: a user's file may also take its very name."""
    name = "bench.json" if kind == "bench" else "show.png"

    def build(out: Path) -> Path:
        out.mkdir(parents=True)
        target = out / name
        if kind == "bench":
            target.write_text(json.dumps({"bench": "eval", "rows": []}))
        else:
            target.write_bytes(png)
        return target

    def write(target: Path) -> None:
        if kind == "bench":
            report_bench_result(check_bench_output(target, True, "eval"), {"bench": "eval"}, "")
        else:
            atomic_write_bytes(check_figure_output(target, True), png)

    return build, write, lambda rel: False


KINDS = ["dataset", "report", "kp-objectives", "kp-jacobian", "kp-uniqueness",
         "legacy-report", "runs", "demo", "bench", "figure"]


@pytest.mark.parametrize("kind", KINDS)
def test_force_never_touches_a_users_file(tmp_path, kind, rdbench_png, capsys):
    rng = random.Random(f"issue-13 {kind}")
    if kind in ("bench", "figure"):
        build, write, skip = _file_case(kind, rdbench_png)
    else:
        build, write, skip = (_runs_case() if kind == "runs" else _demo_case()
                              if kind == "demo" else _directory_case(kind))
    outcomes = {"refused": 0, "written": 0}
    for case in range(CASES_PER_KIND):
        root = tmp_path / str(case)
        outside = root / "outside"
        outside.mkdir(parents=True)
        output = build(root / "parent" / "out")
        directory = output if output.is_dir() else output.parent
        made = _user_tree(rng, root / "parent", outside, lambda rel: rel.startswith("out"))
        made |= _user_tree(rng, directory, outside, skip)
        if output.is_file() and rng.random() < 0.3:  # the user's file under the output's name
            output.write_bytes(rng.randbytes(12))
            made[output] = output.read_bytes()
        before = _snapshot(output)
        try:
            write(output)
        except InputError:
            outcomes["refused"] += 1
            assert _snapshot(output) == before, f"case {case}: refused, but changed"
        else:
            outcomes["written"] += 1
        assert not _intact(made), f"case {case} ({kind}): lost or changed {_intact(made)}"
    assert outcomes["refused"] and outcomes["written"], outcomes  # both sides were tried
    capsys.readouterr()
