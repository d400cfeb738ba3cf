"""Command-line registration for training: ``rdbench train`` and ``rdbench bench train``."""

from __future__ import annotations

import argparse

from rdbench._lazy import handler


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train", help="train a grid of VAEs (resumable)",
                            description="Train every run of a grid TOML file (SPEC §4). "
                            "Re-running skips finished runs and resumes interrupted ones.")
    p.add_argument("config", metavar="CONFIG.toml")
    p.add_argument("--out", default=None, help="runs directory (default runs/<grid name>)")
    p.add_argument("--device", default=None,
                   help="override the grid's device: auto, cpu, cuda, cuda:1, cuda:0,cuda:1")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel jobs (default: one per device)")
    p.add_argument("--backend", default="loky", choices=["loky", "dask"],
                   help="joblib backend: loky processes (default) or a Dask cluster")
    p.add_argument("--scheduler", default=None, metavar="ADDR",
                   help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (with --backend dask)")
    p.add_argument("--dry-run", action="store_true",
                   help="print runs, jobs and estimated cost; start and write nothing")
    p.add_argument("--force", action="store_true",
                   help="train into a non-empty directory that rdbench did not create")
    p.set_defaults(handler=handler("benchmark.train:main"))


def register_bench(benches: argparse._SubParsersAction) -> None:
    try:
        from benchmark.bench import register_bench_train
    except ImportError:  # the benchmark module is optional for the rest of the CLI
        return
    register_bench_train(benches)
