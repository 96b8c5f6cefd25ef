"""Markdown pipe tables: the one renderer (`aggregate.md`, the report's tables, the bench scripts) and
its reader. Cells arrive as finished text: escaping and emphasis are the caller's (see
`wsisum.report.tables.Table`)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence


def pipe_table(columns: Sequence[str], rows: Iterable[Sequence[str]], right: Container[int] = ()) -> str:
    """`| a | b |` lines under a `|---|---:|` rule (`right`: the columns aligned right), newline-ended."""
    lines = ["| " + " | ".join(columns) + " |"]
    lines.append("|" + "".join("---:|" if j in right else "---|" for j in range(len(columns))))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_pipe_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a pipe table as `pipe_table` writes it (no escaped pipes inside)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return [], []

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    return cells(lines[0]), [cells(ln) for ln in lines[2:]]
