"""One report document, two renderings: Markdown beside its PNGs, and a self-contained HTML file
(inline CSS, images as base64 data URIs, no script, no external reference) that opens from file://.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from wsisum.report.tables import Table

CSS = """
:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --ref:#f3f4f6; --accent:#1d4ed8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color:var(--fg); background:#fff; }
main { max-width:1320px; margin:0 auto; padding:24px 32px 48px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:19px; margin:32px 0 8px; padding-bottom:4px; border-bottom:1px solid var(--line); }
p { margin:6px 0 10px; max-width:980px; }
code { font:12.5px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; background:#f6f8fa; padding:1px 4px;
       border-radius:4px; }
nav { margin:12px 0 8px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; }
.muted { color:var(--muted); }
.tablewrap { overflow-x:auto; margin:8px 0 14px; }
table { border-collapse:collapse; font-size:13px; font-variant-numeric:tabular-nums; }
th, td { border:1px solid var(--line); padding:4px 9px; text-align:left; white-space:nowrap; }
th { background:#f6f8fa; font-weight:600; }
td.num, th.num { text-align:right; }
tr.ref td { background:var(--ref); font-style:italic; }
tbody tr:hover td { background:#eef4ff; }
figure { margin:10px 0 22px; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:4px; max-width:980px; }
ul.notes { color:#9a3412; }
"""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[str]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)


def _md_figure(fig: Figure, base: Path) -> str:
    rel = Path(os.path.relpath(fig.path, base)).as_posix()
    return f"![{fig.caption}]({rel})\n\n*{fig.caption}*\n"


def to_markdown(doc: Document, base: Path) -> str:
    """Markdown with figures linked relative to `base` (the directory report.md is written to)."""
    out = [f"# {doc.title}", ""]
    out += [*(f"{p}\n" for p in doc.intro)]
    if doc.notes:
        out += [f"- note: {n}" for n in doc.notes] + [""]
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if isinstance(block, Table):
                out.append(block.to_markdown())
            elif isinstance(block, Figure):
                out.append(_md_figure(block, base))
            else:
                out.append(f"{block}\n")
    return "\n".join(out).rstrip() + "\n"


_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only Markdown the report's prose uses)."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text))


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def to_html(doc: Document) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body><main>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    out += [f'<p class="muted">{_inline(p)}</p>' for p in doc.intro]
    out.append("<nav>" + "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in doc.sections) + "</nav>")
    if doc.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_inline(n)}</li>" for n in doc.notes) + "</ul>")
    for sec in doc.sections:
        out.append(f'<section id="{sec.anchor}"><h2>{html.escape(sec.title)}</h2>')
        for block in sec.blocks:
            if isinstance(block, Table):
                out.append(f'<div class="tablewrap">{block.to_html()}</div>')
            elif isinstance(block, Figure):
                out.append(
                    f'<figure><img src="{data_uri(block.path)}" alt="{html.escape(block.caption, quote=True)}">'
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
            else:
                out.append(f"<p>{_inline(block)}</p>")
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
