"""Command-line registration: ``rdbench data generate`` and ``rdbench bench data``.

Argument definitions only; the handlers live in ``tetrominoes.commands`` and
``tetrominoes.bench`` and are imported when a command runs. ``rdbench data info|show|
import|split`` work on any dataset and are registered by ``imagesets``.
"""

from __future__ import annotations

import argparse

from rdbench._lazy import handler


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``rdbench data generate`` to ``rdbench data`` (``imagesets`` registers the rest)."""
    from imagesets.cli import data_actions

    _register_generate(data_actions(commands))


def _register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write the dataset (163,840 images, splits, manifest)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument("--seed", type=int, default=0, help="random seed of factors and splits")
    p.add_argument("--workers", type=int, default=None,
                   help="render processes (default: every available core)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR if it is an earlier dataset (never any other directory)")
    # hidden: a coarser grid (5 bin counts) for tests and smoke runs
    p.add_argument("--grid", type=int, nargs=5, default=None, help=argparse.SUPPRESS)
    p.set_defaults(handler=handler("tetrominoes.commands:generate"))


def register_bench(benches: argparse._SubParsersAction) -> None:
    """Add ``rdbench bench data``."""
    p = benches.add_parser("data", help="rendering throughput, generation time and memory")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the results here "
                   "(an existing file only if it is an earlier `bench data` result)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and a reduced-grid generation, for a smoke test")
    p.add_argument("--workers", type=int, default=None,
                   help="render processes for the generation (default: every core)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out file that is not a `bench data` result")
    p.set_defaults(handler=handler("tetrominoes.bench:main"))
