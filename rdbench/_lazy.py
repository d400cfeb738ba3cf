"""Lazy command handlers: the module behind a command is imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def handler(target: str) -> Callable[[argparse.Namespace], int | None]:
    """``handler("pkg.module:function")`` imports ``pkg.module`` on call and runs ``function``."""
    module_name, function_name = target.split(":")

    def run(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module_name), function_name)(args)

    run.__qualname__ = f"handler({target!r})"
    return run
