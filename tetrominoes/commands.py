"""Handlers of ``rdbench data generate|info|show`` (input checked before any work starts)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rdbench.io import InputError, check_figure_output
from tetrominoes.factors import FACTOR_NAMES


def generate(args: argparse.Namespace) -> int:
    from tetrominoes.build import generate as write_dataset

    path = write_dataset(args.out, seed=args.seed, workers=args.workers, force=args.force,
                         _grid=args.grid)
    print(f"wrote {path}")
    return 0


def describe(data) -> list[str]:
    """The lines ``rdbench data info`` prints (no checksums)."""
    m = data.manifest
    lines = [f"dataset     {data.path}",
             f"images      {len(data)} × {'×'.join(map(str, m['counts']['image_shape']))} uint8",
             f"seed        {m['seed']}   generator {m['generator_version']}   "
             f"fingerprint {data.fingerprint}",
             "factors     name     range                 bins"]
    for name in FACTOR_NAMES:
        lo, hi = m["ranges"][name]
        span = f"[{lo:g}, {hi:g})"
        lines.append(f"            {name:<8} {span:<18}{m['bins'][name]:>6}")
    lines.append("splits      name            train     test")
    for name in data.split_names:
        sizes = m["splits"][name]
        lines.append(f"            {name:<14}{sizes['train']:>7}  {sizes['test']:>7}")
    return lines


def info(args: argparse.Namespace) -> int:
    from tetrominoes.data import load

    data = load(args.dir)
    print("\n".join(describe(data)))
    if args.no_verify:
        print("checksums   not verified (--no-verify)")
        return 0
    problems = data.verify()
    if problems:  # listed with the rest of the description; the error is one line
        print("\n".join([f"checksums   FAILED ({len(problems)} problem(s))"]
                        + [f"            {p}" for p in problems]))
        raise InputError(f"dataset is damaged ({len(problems)} problem(s): {problems[0]}); "
                         "regenerate it with `rdbench data generate`")
    print(f"checksums   ok ({len(data.manifest['files'])} files)")
    return 0


def check_figure_path(out: str | os.PathLike, force: bool) -> Path:
    """A .png/.pdf path that may be written: new, or with ``force`` a figure rdbench wrote
    (see :func:`rdbench.io.check_figure_output`)."""
    path = Path(out).expanduser().resolve()
    if path.suffix.lower() not in (".png", ".pdf"):
        raise InputError(f"--out must end in .png or .pdf: {path}")
    return check_figure_output(path, force)


def check_factor_pair(factors) -> tuple[str, str]:
    factors = tuple(factors)
    bad = [f for f in factors if f not in FACTOR_NAMES]
    if bad or len(factors) != 2 or factors[0] == factors[1]:
        raise InputError(f"--factors needs two different names of {', '.join(FACTOR_NAMES)}, "
                         f"got {' '.join(factors)}")
    return factors


def show(args: argparse.Namespace) -> int:
    from tetrominoes.data import load

    data = load(args.dir)
    data.split(args.split)  # unknown split: InputError with the valid names
    factors = check_factor_pair(args.factors)
    if args.n < 1:
        raise InputError(f"--n must be positive, got {args.n}")
    path = check_figure_path(args.out, args.force)
    from tetrominoes.figures import plot_overview

    plot_overview(data, args.split, path, factors=factors, n=args.n, seed=args.seed)
    print(f"wrote {path}")
    return 0
