"""Refresh the generated parts of the documentation from the code (run by ``make docs``).

A page marks a generated block with two HTML comments; everything between them is
replaced by what the code says now::

    <!-- generated: help evaluate -->          `rdbench evaluate --help`
    <!-- generated: layers cnn3 1x28x28 -->    benchmark.models.layer_table("cnn3", ...)
    <!-- end generated -->

So the command reference and the layer lists cannot drift from the code: ``make docs``
rewrites them before ``mkdocs build --strict``, and a commit carries the refreshed pages.
``python docs/generate.py --check`` only reports the pages that are out of date (exit 1).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- generated: (?P<what>[^>]*?) -->\n)(?P<body>.*?)"
                   r"(<!-- end generated -->)", re.DOTALL)
WIDTH = "92"  # argparse wraps help at $COLUMNS: fixed, so the pages do not depend on a terminal


def help_text(command: str) -> str:
    """``rdbench COMMAND --help`` as printed, in a fenced block."""
    from rdbench.cli import build_parser

    os.environ["COLUMNS"] = WIDTH
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([*command.split(), "--help"])
    text = out.getvalue().rstrip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"rdbench {command} --help printed no usage")
    shown = " ".join(["rdbench", *command.split(), "--help"])
    return f"```text\n$ {shown}\n{text}\n```\n"


def layers(spec: str) -> str:
    """Layer table of a built-in architecture on an image shape ``CxHxW``."""
    from benchmark.models import layer_table

    name, shape = spec.split()
    image_shape = tuple(int(s) for s in shape.split("x"))
    return layer_table(name, image_shape=image_shape) + "\n"


GENERATORS = {"help": help_text, "layers": layers}


def refresh(text: str) -> str:
    def replace(match: re.Match) -> str:
        kind, _, arg = match["what"].partition(" ")
        # blank lines around the content: a Markdown HTML block (the comment) ends at one
        return match[1] + "\n" + GENERATORS[kind](arg) + "\n" + match[4]

    return BLOCK.sub(replace, text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = refresh(text)
        if new != text:
            stale.append(page.relative_to(DOCS.parent))
            if not check:
                page.write_text(new, encoding="utf-8")
    verb = "out of date" if check else "refreshed"
    for page in stale:
        print(f"{verb}: {page}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
