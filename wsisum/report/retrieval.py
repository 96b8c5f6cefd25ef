"""The report's retrieval section: leave-one-case-out slide search on every summary set and on the
full bags (`wsisum-retrieve`, run by the pipeline into `retrieve/`), the second use of a summary.

One row per task, sampler and budget: the majority vote of the 5 nearest slides (accuracy), mAP@5
and the patches per bag searched, per set distance; the full bags are the reference row. A plot of
the vote versus budget per distance, full bags dashed. Retrieval has one value per run (every slide
queries once), so there is no spread over replicates here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.evaluate.aggregate import FULL, aggregate, plot_metric_vs_budget
from wsisum.report.render import Figure, Section
from wsisum.report.tables import Table

VOTE, MAP, PATCHES = "test_majority_vote_at_5", "test_map_at_5", "patches_per_bag"
TABLE_FILE = "retrieval_table.csv"
DISTANCE_PREFIX = "retrieval_"


def retrieval_table(agg: pd.DataFrame) -> pd.DataFrame:
    """Wide, from `aggregate`'s frame: task, sampler, budget, patches, then `<distance> vote@5` and
    `<distance> mAP@5`."""
    wide = agg.pivot_table(index=["task", "sampler", "budget"], columns=["mil", "metric"], values="mean", dropna=False)
    rows = []
    for (task, sampler, budget), values in wide.iterrows():
        row = {"task": task, "sampler": sampler, "budget": budget}
        patches = [v for (mil, metric), v in values.items() if metric == PATCHES and pd.notna(v)]
        row["patches"] = patches[0] if patches else float("nan")
        for (mil, metric), v in values.items():
            if metric in (VOTE, MAP):
                name = str(mil).removeprefix(DISTANCE_PREFIX)
                row[f"{name} {'vote@5' if metric == VOTE else 'mAP@5'}"] = v
        rows.append(row)
    out = pd.DataFrame(rows)
    metric_cols = [c for c in out.columns if c.endswith(("vote@5", "mAP@5"))]
    out = out[out[metric_cols].notna().any(axis=1)]  # the pivot's product of keys that never ran
    out["_full"] = out["sampler"] != FULL  # the reference first in each task
    return out.sort_values(["task", "_full", "sampler", "budget"]).drop(columns="_full").reset_index(drop=True)


def _render(table: pd.DataFrame) -> Table:
    columns = list(table.columns)
    rows, ref, strong = [], set(), set()
    metric_cols = [j for j, c in enumerate(columns) if c.endswith(("vote@5", "mAP@5"))]
    for i, rec in enumerate(table.itertuples(index=False)):
        cells = []
        for c, v in zip(columns, rec):
            if c == "budget":
                cells.append("" if pd.isna(v) else str(int(v)))
            elif c == "patches":
                cells.append("" if pd.isna(v) else f"{v:.0f}")
            elif isinstance(v, float):
                cells.append("n/a" if pd.isna(v) else f"{v:.3f}")
            else:
                cells.append(str(v))
        rows.append(cells)
        if rec.sampler == FULL:
            ref.add(i)
    for _task, grp in table.groupby("task", sort=False):  # bold: the best summary of the task per column
        summaries = grp[grp["sampler"] != FULL]
        for j in metric_cols:
            col = summaries[columns[j]]
            if col.notna().any():
                strong.add((int(col.idxmax()), j))
    numeric = set(range(2, len(columns)))
    return Table(columns, rows, ref_rows=ref, strong=strong, numeric=numeric)


def retrieval_section(df: pd.DataFrame | None, out_dir: Path, fig_dir: Path) -> tuple[Section | None, dict[str, Path]]:
    """(the section, files written), or (None, {}) when the study ran no retrieval."""
    if df is None or df.empty:
        return None, {}
    agg = aggregate(df)
    table = retrieval_table(agg)
    written = {"retrieval_table": out_dir / TABLE_FILE}
    with atomic_path(written["retrieval_table"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = plot_metric_vs_budget(agg, fig_dir, VOTE)
    sec = Section("Retrieval", "retrieval")
    sec.blocks.append(
        "Slide retrieval, leave-one-case-out (`wsisum-retrieve`): every labelled slide queries all slides of "
        "other cases, and the majority label of its 5 nearest is its prediction. `vote@5`: accuracy of that "
        "vote; `mAP@5`: mean average precision of the 5 nearest; per set distance (`median_min`: Yottixel's "
        "median over query patches of the minimum cosine distance; `mean_cosine`: cosine of the mean "
        "features). The shaded `full` row is the search on full bags (`patches`: patches per bag searched). "
        "Bold: the best summary of the task."
    )
    sec.blocks.append(_render(table))
    for p in figs:
        written[p.stem] = p
        distance = p.stem.rsplit("_vs_budget_", 1)[-1].removeprefix(DISTANCE_PREFIX)
        sec.blocks.append(
            Figure(
                p,
                f"majority vote at 5 versus budget ({distance}): a panel per task, a line per sampler; dashed, full bags.",
            )
        )
    return sec, written
