"""A small table type that renders the same cells to Markdown (`wsisum.markdown.pipe_table`, the
renderer of `aggregate.md` too) and to HTML; the results table and the paired tables (winner matrix, ablation, retention of `wsisum.evaluate.paired`).

The results table is `wsisum.evaluate.aggregate.markdown_table` (mean ± sample std over folds, the
full-bag row first in each task), read back into cells, so the report and `aggregate.md` of a
sweep can never disagree; the report only renames the columns and marks the best summary per task.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from wsisum.evaluate.aggregate import FULL, markdown_table
from wsisum.markdown import parse_pipe_table, pipe_table

RESULT_METRICS = ("test_auroc", "test_balanced_accuracy", "test_f1_macro")
HEADERS = {
    "test_auroc": "AUROC",
    "test_balanced_accuracy": "balanced accuracy",
    "test_f1_macro": "macro F1",
    "epoch time full/this": "epoch time full/this",
}
BEST_BY = "test_auroc"


@dataclass
class Table:
    """Header and rows of strings; `ref_rows` are reference rows (full bags), `strong` cells are bold."""

    columns: list[str]
    rows: list[list[str]]
    ref_rows: set[int] = field(default_factory=set)
    strong: set[tuple[int, int]] = field(default_factory=set)
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    styles: dict[tuple[int, int], str] = field(default_factory=dict)  # inline CSS of a cell (HTML only)

    def cell(self, i: int, j: int) -> str:
        return self.rows[i][j]

    def to_markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        rows = [
            [f"**{esc(c)}**" if (i, j) in self.strong and c else esc(c) for j, c in enumerate(row)]
            for i, row in enumerate(self.rows)
        ]
        return pipe_table([esc(c) for c in self.columns], rows, self.numeric)

    def to_html(self) -> str:
        out = ["<table>", "<thead><tr>"]
        out += [
            f"<th{' class=num' if j in self.numeric else ''}>{html.escape(c)}</th>" for j, c in enumerate(self.columns)
        ]
        out.append("</tr></thead><tbody>")
        for i, row in enumerate(self.rows):
            out.append('<tr class="ref">' if i in self.ref_rows else "<tr>")
            for j, c in enumerate(row):
                text = html.escape(c)
                if (i, j) in self.strong and c:
                    text = f"<strong>{text}</strong>"
                style = f' style="{html.escape(self.styles[(i, j)], quote=True)}"' if (i, j) in self.styles else ""
                out.append(f"<td{' class=num' if j in self.numeric else ''}{style}>{text}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        return "".join(out)


def budget_label(sampler: str, budget: str) -> str:
    return "all" if sampler == FULL and not budget else budget


def _best_keys(agg: pd.DataFrame, metric: str) -> set[tuple[str, str, str, str]]:
    """(task, mil, sampler, budget) of the best summary (not full bags) by `metric` in each task and MIL."""
    sub = agg[(agg["metric"] == metric) & (agg["sampler"] != FULL) & agg["mean"].notna()]
    best = set()
    for (task, mil), grp in sub.groupby(["task", "mil"], sort=False):
        r = grp.loc[grp["mean"].idxmax()]
        b = "" if pd.isna(r["budget"]) else str(int(r["budget"]))
        best.add((str(task), str(mil), str(r["sampler"]), b))
    return best


def results_table(agg: pd.DataFrame, metrics: Sequence[str] = RESULT_METRICS) -> Table:
    """task × MIL × sampler × budget, mean ± std over folds of the test metrics, full bags first."""
    head, rows = parse_pipe_table(markdown_table(agg, metrics))
    idx = {c: j for j, c in enumerate(head)}
    best = _best_keys(agg, BEST_BY)
    table = Table([HEADERS.get(c, c) for c in head], [])
    table.numeric = {j for c, j in idx.items() if c not in ("task", "mil", "sampler")}
    for i, row in enumerate(rows):
        key = (row[idx["task"]], row[idx["mil"]], row[idx["sampler"]], row[idx["budget"]])
        if key[2] == FULL:
            table.ref_rows.add(i)
        if key in best and BEST_BY in idx:
            table.strong.add((i, idx[BEST_BY]))
        row[idx["budget"]] = budget_label(key[2], key[3])
        table.rows.append(row)
    return table


def format_bytes(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_ratio(full: float, mine: float) -> str:
    """How many times the full-bag value is this one's ('' when either is missing or zero)."""
    if full is None or mine is None or math.isnan(full) or math.isnan(mine) or mine <= 0:
        return ""
    return f"{full / mine:.1f}×"


# a verdict's marker (plain text, so Markdown shows it too) and its colour in HTML
MARKERS = {"win": "▲", "loss": "▼", "tie": "=", "n/a": "?"}
VERDICT_STYLES = {"win": "background:#dcfce7;color:#14532d", "loss": "background:#fee2e2;color:#7f1d1d"}
RETAINED = 0.98  # a summary that keeps >= 98% of the full-bag metric is marked
RETAINED_STYLE = "background:#dcfce7"


def _budget_cell(b: object) -> str:
    return "all" if b is None or pd.isna(b) else str(int(b))


def paired_cell(r: dict) -> str:
    """`▲ win +0.031 [+0.010, +0.052] 12/15`: verdict, mean paired difference, its CI, wins/pairs."""
    n = int(r["n_pairs"])
    mark = MARKERS.get(r["verdict"], "")
    if r["verdict"] == "n/a":
        diff = "" if n == 0 else f" {r['mean_diff']:+.3f}"
        return f"{mark} n/a{diff} ({n} pair{'s' if n != 1 else ''})"
    return f"{mark} {r['verdict']} {r['mean_diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] {int(r['wins'])}/{n}"


def paired_table(
    frame: pd.DataFrame, column: str = "baseline", keys: Sequence[str] = ("task", "mil", "budget")
) -> Table:
    """Rows by `keys`, a column per `column` value (the baselines of a winner matrix, the variants of
    an ablation), a `paired_cell` per comparison, coloured by verdict in HTML."""
    names = sorted(frame[column].unique())
    keys = list(keys)
    table = Table([*keys, *names], [])
    table.numeric = set(range(len(keys), len(keys) + len(names)))
    rows = frame.sort_values(keys, na_position="first")
    for i, (key, grp) in enumerate(rows.groupby(keys, sort=False, dropna=False)):
        cells = {r[column]: r for r in grp.to_dict("records")}
        row = [_budget_cell(v) if k == "budget" else str(v) for k, v in zip(keys, key)]
        for j, name in enumerate(names, start=len(keys)):
            r = cells.get(name)
            row.append("" if r is None else paired_cell(r))
            if r is not None and r["verdict"] in VERDICT_STYLES:
                table.styles[(i, j)] = VERDICT_STYLES[r["verdict"]]
        table.rows.append(row)
    return table


def retention_table(frame: pd.DataFrame) -> Table:
    """Rows (task, mil, sampler), a column per budget: mean retention [CI]; bold (and green in HTML)
    where the mean keeps at least `RETAINED` of the full-bag metric."""
    budgets = sorted(int(b) for b in frame["budget"].dropna().unique())
    table = Table(["task", "mil", "sampler", *(f"budget {b}" for b in budgets)], [])
    table.numeric = set(range(3, 3 + len(budgets)))
    for i, ((task, mil, sampler), grp) in enumerate(frame.groupby(["task", "mil", "sampler"], sort=True)):
        cells = {int(r["budget"]): r for r in grp.to_dict("records")}
        row = [str(task), str(mil), str(sampler)]
        for j, b in enumerate(budgets, start=3):
            r = cells.get(b)
            if r is None:
                row.append("")
                continue
            ci = "" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            row.append(f"{r['retention']:.3f}{ci}")
            if r["retention"] >= RETAINED:
                table.strong.add((i, j))
                table.styles[(i, j)] = RETAINED_STYLE
        table.rows.append(row)
    return table
