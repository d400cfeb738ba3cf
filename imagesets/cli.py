"""Command-line registration: ``rdbench data info|show|import|split``.

Argument definitions only; the handlers live in ``imagesets.commands`` and are imported when
a command runs. Dataset generators (``tetrominoes``) add their own ``data`` actions through
:func:`data_actions`.
"""

from __future__ import annotations

import argparse

from rdbench._lazy import handler

_IMPORT_KINDS = "mnist, fashion-mnist, dsprites, 3dshapes, smallnorb, celeba, folder, npy"


def data_actions(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``rdbench data`` (the parser is created on first use)."""
    if "data" not in commands.choices:
        data = commands.add_parser("data", help="generate, import, split, inspect and show "
                                   "datasets")
        data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    parser = commands.choices["data"]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``rdbench data info|show|import|split`` to ``rdbench``."""
    sub = data_actions(commands)
    p = sub.add_parser("info", help="counts, shape, factors, splits and checksum status")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 checks (fast)")
    p.set_defaults(handler=handler("imagesets.commands:info"))
    _register_show(sub)
    _register_import(sub)
    _register_split(sub)


def _register_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="samples grid and split picture (paper Fig. 1, 2)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--split", required=True, metavar="NAME", help="split to picture")
    p.add_argument("--out", required=True, metavar="FILE.png", help="figure (.png or .pdf)")
    p.add_argument("--factors", nargs=2, default=None, metavar=("F1", "F2"),
                   help="the two factors of the split picture (default: the dataset's own "
                   "pair, x y for Tetrominoes)")
    p.add_argument("--n", type=int, default=600, help="points in the split picture")
    p.add_argument("--seed", type=int, default=0, help="which samples are shown")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(handler=handler("imagesets.commands:show"))


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help=f"import a dataset ({_IMPORT_KINDS})",
                       description="Read a published dataset's official files, a folder of "
                       "images or a .npy array into rdbench's dataset format, with splits.")
    p.add_argument("kind", metavar="KIND", help=_IMPORT_KINDS)
    p.add_argument("--from", dest="source", metavar="PATH", default=None,
                   help="the official file(s): a directory holding them, or the file itself")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument("--download", action="store_true",
                   help="fetch the official files (pinned sha256) into the cache first")
    p.add_argument("--mirror", metavar="URL", default=None,
                   help="base address to download from instead of the publisher's")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="download cache (default ~/.cache/rdbench or $RDBENCH_CACHE)")
    p.add_argument("--size", type=int, default=None, metavar="S",
                   help="side of the square images (smallnorb, celeba, folder; default 64)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="folder: 1 (grayscale) or 3 (RGB, default)")
    p.add_argument("--factors", metavar="CSV", default=None,
                   help="npy: one numeric row of factors per image")
    p.add_argument("--categorical", metavar="A,B", default=None,
                   help="npy: the --factors columns that are categorical")
    p.add_argument("--seed", type=int, default=0, help="seed of the random splits (default 0)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR if it is an earlier rdbench dataset (never anything else)")
    p.set_defaults(handler=handler("imagesets.commands:import_"))


def _register_split(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("split", help="add your own train/test split to a dataset",
                       description="Add split NAME: rows where a pandas query on the factors "
                       "holds (test: the others, or --test), or rows from an .npz.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--train", metavar="QUERY", default=None,
                   help="e.g. \"not (shape == 2 and scale > 0.8)\"")
    p.add_argument("--test", metavar="QUERY", default=None,
                   help="rows of the test set (default: every row not in train)")
    p.add_argument("--from", dest="from_file", metavar="FILE.npz", default=None,
                   help="an .npz with integer arrays 'train' and 'test' of row indices")
    p.add_argument("--force", action="store_true", help="replace an earlier user split NAME")
    p.set_defaults(handler=handler("imagesets.commands:split"))


def register_bench(benches: argparse._SubParsersAction) -> None:
    """The dataset bench is registered by ``tetrominoes`` (``rdbench bench data``)."""
