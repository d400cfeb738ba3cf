"""The ``rdbench`` command line: one dispatcher, each package registers its own commands.

Command modules keep their top level light (argparse only) and import torch and friends
inside the handlers, so ``rdbench --help`` and input validation answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rdbench import __version__
from rdbench.files import NO_ROOM
from rdbench.io import InputError

_PACKAGES = ("imagesets", "tetrominoes", "benchmark", "analysis")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), exit status 2 as usual; the
    subcommands' parsers are of this class too (``add_subparsers`` uses the parent's)."""

    def error(self, message: str):  # noqa: ANN201 (argparse's signature: NoReturn)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(packages: Sequence[str] = _PACKAGES) -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="rdbench",
        description="Rate-distortion benchmarking for variational autoencoders.",
    )
    parser.add_argument("--version", action="version", version=f"rdbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser("bench", help="throughput benchmarks (SPEC §8)")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name in packages:
        module = importlib.import_module(f"{name}.cli")
        module.register(commands)
        module.register_bench(benches)
    return parser


def main(argv: Sequence[str] | None = None, packages: Sequence[str] = _PACKAGES) -> int:
    parser = build_parser(packages)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except InputError as e:
        print(f"rdbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rdbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rdbench data info DIR | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except OSError as e:
        if e.errno not in NO_ROOM:
            raise
        print(f"rdbench: error: {no_room_message(e)}", file=sys.stderr)
        return 1


# A full disk, a full quota, a read-only file system: not the command's fault, nor a bug.


def no_room_message(e: OSError) -> str:
    """One line for an OSError of :data:`NO_ROOM`: what, where, and what became of the
    output (the notes the writers added, e.g. ``staged_directory``'s)."""
    where = f" while writing {e.filename}" if e.filename else ""
    kept = "; ".join(getattr(e, "__notes__", ())) or \
        "no file was left half-written; what was written before it is kept"
    return f"{(e.strerror or 'no space left on device').lower()}{where}; {kept}"


if __name__ == "__main__":
    sys.exit(main())
