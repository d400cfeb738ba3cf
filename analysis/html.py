"""The report as a document: blocks rendered to Markdown (``report.md``) and to one
self-contained HTML page (``index.html``: PNGs as base64 data URIs, inline CSS, no external
resources, opens offline).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.plot_style import FigureResult, Skipped
from analysis.tables import to_markdown


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Figure:
    name: str
    caption: str
    result: FigureResult


@dataclass(frozen=True)
class Table:
    table: pd.DataFrame  # string cells
    caption: str = ""


Block = Heading | Paragraph | Figure | Table


def _png(result: FigureResult) -> Path | None:
    if isinstance(result, Skipped):
        return None
    return next((p for p in result if p.suffix == ".png"), None)


def to_markdown_page(title: str, blocks: list[Block], root: Path) -> str:
    """``report.md``: figures linked by path relative to ``root`` (the report directory)."""
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines += ([f"*{block.caption}*", ""] if block.caption else []) + [
                to_markdown(block.table)]
        else:
            lines += _markdown_figure(block, root)
    return "\n".join(lines).rstrip() + "\n"


def _markdown_figure(block: Figure, root: Path) -> list[str]:
    png = _png(block.result)
    if png is None:
        return [f"*{block.name}: {block.result}*", ""]
    rel = png.relative_to(root).as_posix()
    pdf = Path(rel).with_suffix(".pdf").as_posix()
    return [f"![{block.name}]({rel})", "", f"*{block.caption}* ([PDF]({pdf}))", ""]


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;
margin:2em auto;padding:0 1.2em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #0072B2;padding-bottom:.2em}
h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.15em}
figure{margin:1.2em 0;padding:.6em;border:1px solid #eee;border-radius:6px;background:#fff}
figure img{max-width:min(100%,900px);height:auto;display:block;margin:0 auto}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
.skipped{color:#8a5a00;background:#fff6e0;border-left:4px solid #E69F00;padding:.4em .8em;
font-size:.92em}
.tablewrap{max-height:38em;overflow:auto;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;white-space:nowrap}
th,td{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right}
th{position:sticky;top:0;background:#f3f6fa}
td:nth-child(-n+6),th:nth-child(-n+6){text-align:left}
nav a{margin-right:1em}
"""


def to_html_page(title: str, blocks: list[Block]) -> str:
    """One self-contained page: every PNG inlined as a data URI, CSS inline."""
    nav = " ".join(f'<a href="#{_anchor(b.text)}">{html.escape(b.text)}</a>'
                   for b in blocks if isinstance(b, Heading) and b.level == 2)
    body = [f"<h1>{html.escape(title)}</h1>", f"<nav>{nav}</nav>"]
    body += [_html_block(b) for b in blocks]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        tag = f"h{block.level}"
        return f'<{tag} id="{_anchor(block.text)}">{html.escape(block.text)}</{tag}>'
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        caption = f"<p><em>{html.escape(block.caption)}</em></p>" if block.caption else ""
        return caption + f'<div class="tablewrap">{_html_table(block.table)}</div>'
    return _html_figure(block)


def _html_figure(block: Figure) -> str:
    png = _png(block.result)
    if png is None:
        return f'<p class="skipped">{html.escape(block.name)}: {html.escape(str(block.result))}</p>'
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure id="{_anchor(block.name)}"><img alt="{html.escape(block.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(block.name)}</b>. '
            f"{html.escape(block.caption)}</figcaption></figure>")


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = ("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
            for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
