"""Handlers of ``rdbench data info|show|import|split`` (input checked before any work starts)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rdbench.io import InputError


def describe(data) -> list[str]:
    """The lines ``rdbench data info`` prints (no checksums)."""
    from imagesets.splits import factor_range

    m = data.manifest
    h, w, c = m["images"]["shape"]
    verified = ("checked against the publisher's sha256" if m.get("sources_verified")
                else "sha256 recorded")
    lines = [f"dataset     {data.path}",
             f"kind        {data.kind}   ({m.get('generator', '?')})",
             f"images      {len(data):,} × {h}×{w}×{c} uint8",
             f"seed        {data.seed}   fingerprint {data.fingerprint}"]
    if m["sources"]:
        lines.append(f"sources     {len(m['sources'])} file(s), {verified}: "
                     f"{', '.join(m['sources'])}")
    if data.factor_specs:
        lines.append("factors     name           kind           values")
        for spec in data.factor_specs:
            column = data.factors[spec.name]
            distinct = column.nunique()
            if spec.categorical:
                span = f"{distinct} categories"
            else:
                lo, hi = factor_range(spec, data.factors)
                declared = "" if spec.range is None else " (declared)"
                span = f"[{lo:g}, {hi:g}]{declared}, {distinct:,} distinct"
            kind = "categorical" if spec.categorical else "ordinal"
            lines.append(f"            {spec.name:<15}{kind:<15}{span}")
    else:
        lines.append("factors     none (random and cv-N splits only)")
    lines.append("splits      name              train     test   rule")
    for name in data.split_names:
        info = m["splits"][name]
        lines.append(f"            {name:<16}{info['train']:>7,}  {info['test']:>7,}   "
                     f"{info.get('rule', '?')}")
    return lines


def info(args: argparse.Namespace) -> int:
    from imagesets.data import load

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
                         "write it again (`rdbench data generate` or `rdbench data import`)")
    count = len(data.manifest["files"]) + len(data.manifest["added_files"])
    print(f"checksums   ok ({count} files)")
    return 0


def check_figure_path(out: str | os.PathLike, force: bool) -> Path:
    """A .png/.pdf path rdbench may write: new, or (``force``) a figure rdbench wrote."""
    from rdbench.io import check_figure_output

    path = Path(out).expanduser().resolve()
    if path.suffix.lower() not in (".png", ".pdf"):
        raise InputError(f"--out must end in .png or .pdf: {path}")
    return check_figure_output(path, force)


def check_factor_pair(data, factors) -> tuple[str, str] | None:
    """``--factors F1 F2``: two different non-categorical factors of the dataset (None: the
    dataset's default pair, if it has one)."""
    from imagesets.figures import display_factors
    from imagesets.splits import ordered_factors

    if factors is None:
        return display_factors(data)
    names = [s.name for s in ordered_factors(data.factor_specs)]
    factors = tuple(factors)
    if any(f not in names for f in factors) or len(factors) != 2 or factors[0] == factors[1]:
        raise InputError(f"--factors needs two different non-categorical factors of the "
                         f"dataset ({', '.join(names) or 'it has none'}), got {' '.join(factors)}")
    return factors


def show(args: argparse.Namespace) -> int:
    from imagesets.data import load

    data = load(args.dir)
    data.split(args.split)  # unknown split: InputError with the valid names
    factors = check_factor_pair(data, args.factors)
    if args.n < 1:
        raise InputError(f"--n must be positive, got {args.n}")
    path = check_figure_path(args.out, args.force)
    from imagesets.figures import plot_overview

    plot_overview(data, args.split, path, factors=factors, n=args.n, seed=args.seed)
    if factors is None:
        print("note: no split picture: the dataset has fewer than two non-categorical factors")
    print(f"wrote {path}")
    return 0


def import_(args: argparse.Namespace) -> int:
    from imagesets.importers import ImportOptions, import_dataset

    if args.size is not None and not 4 <= args.size <= 1024:
        raise InputError(f"--size must be between 4 and 1024 pixels, got {args.size}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    categorical = tuple(c for c in (args.categorical or "").split(",") if c)
    options = ImportOptions(size=args.size, channels=args.channels,
                            factors=Path(args.factors) if args.factors else None,
                            categorical=categorical, seed=args.seed)
    path = import_dataset(args.kind, args.source, args.out, options=options, force=args.force,
                          download=args.download, mirror=args.mirror, cache_dir=args.cache)
    print(f"wrote {path}")
    return 0


def split(args: argparse.Namespace) -> int:
    from imagesets.usersplits import add_split

    if args.test is not None and args.train is None:
        raise InputError("--test goes with --train")
    if (args.train is None) == (args.from_file is None):
        raise InputError("give --train QUERY [--test QUERY] or --from FILE.npz")
    train, test = add_split(args.dir, args.name, train_query=args.train, test_query=args.test,
                            from_file=args.from_file, force=args.force)
    print(f"added split {args.name!r} to {Path(args.dir).resolve()}: "
          f"{len(train):,} train / {len(test):,} test")
    return 0

