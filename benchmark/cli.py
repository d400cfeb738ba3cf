"""Command-line registration for this package (argparse only; handlers import lazily)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's commands to ``rdbench``."""


def register_bench(benches: argparse._SubParsersAction) -> None:
    """Add this package's ``rdbench bench`` targets."""
