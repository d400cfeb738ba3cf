"""Handler of ``rdbench data generate`` (``data info|show`` work on any dataset:
:mod:`imagesets.commands`)."""

from __future__ import annotations

import argparse


def generate(args: argparse.Namespace) -> int:
    from tetrominoes.build import generate as write_dataset

    path = write_dataset(args.out, seed=args.seed, workers=args.workers, force=args.force,
                         _grid=args.grid)
    print(f"wrote {path}")
    return 0
