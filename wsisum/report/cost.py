"""What a summary saves against the full bags: patches and storage per summary set, and the cost of
training a MIL model on it (time per epoch, peak memory) per task, each with the ratio full/summary.

Storage compares the summary files of a set with the cohort's `h5_files/` bags of the *same slides*;
MIL cost comes from the evaluation metrics (`epoch_time_s`, `peak_rss_mb`, `peak_gpu_mem_mb`,
`peak_rss_increase_mb`, `patches_per_bag`), mean over folds; a metric no run recorded is left out.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from wsisum.evaluate.aggregate import FULL, KEYS, budget_text, format_mean_std, metric_digits
from wsisum.report.rundir import RunDir
from wsisum.report.tables import Table, budget_label, format_bytes, format_ratio

STORAGE_COLUMNS = [
    "sampler",
    "budget",
    "slides",
    "patches_per_slide",
    "full_patches_per_slide",
    "bytes",
    "full_bytes",
    "missing_sources",
]
MIL_COST_METRICS = ("patches_per_bag", "epoch_time_s", "peak_rss_mb", "peak_rss_increase_mb", "peak_gpu_mem_mb")


def storage_costs(run: RunDir) -> pd.DataFrame:
    """One row per summary set plus a `full` row: slides, mean patches per slide, bytes on disk.

    `full_*` columns describe the full bags of the same slides as the set; `full_bytes` is NaN when
    a source bag was not found (`missing_sources` says how many), so no ratio is made from a part.
    """
    rows = []
    union: dict[str, tuple[int, int]] = {}  # slide id -> (patches, bytes) of its full bag
    for s in run.summary_sets:
        kept, full_n, full_bytes, missing = [], [], 0, 0
        for f in s.files.values():
            kept.append(f.n_kept)
            src = run.source_bag(f)
            if src is None:
                missing += 1
                if f.n_source is not None:
                    full_n.append(f.n_source)
                continue
            full_n.append(src.n_patches)
            full_bytes += src.nbytes
            union[f.slide_id] = (src.n_patches, src.nbytes)
        rows.append(
            {
                "sampler": s.sampler,
                "budget": s.budget,
                "slides": len(s.files),
                "patches_per_slide": float(np.mean(kept)),
                "full_patches_per_slide": float(np.mean(full_n)) if full_n else math.nan,
                "bytes": int(sum(f.nbytes for f in s.files.values())),
                "full_bytes": math.nan if missing or not s.files else float(full_bytes),
                "missing_sources": missing,
            }
        )
    if union:
        n = np.array([v[0] for v in union.values()], dtype=float)
        b = float(sum(v[1] for v in union.values()))
        rows.insert(
            0,
            {
                "sampler": FULL,
                "budget": pd.NA,
                "slides": len(union),
                "patches_per_slide": float(n.mean()),
                "full_patches_per_slide": float(n.mean()),
                "bytes": b,
                "full_bytes": b,
                "missing_sources": 0,
            },
        )
    df = pd.DataFrame(rows, columns=STORAGE_COLUMNS)
    for c in ("budget", "bytes", "full_bytes"):  # exact integers in the CSV (NA where unknown)
        df[c] = df[c].astype("Float64").round().astype("Int64")
    return df


def _num(x: object) -> float:
    return math.nan if x is None or pd.isna(x) else float(x)


def storage_table(df: pd.DataFrame) -> Table:
    t = Table(
        ["sampler", "budget", "slides", "patches per slide", "patches full/this", "storage", "storage full/this"],
        [],
        numeric={1, 2, 3, 4, 5, 6},
    )
    for i, r in enumerate(df.itertuples(index=False)):
        b = budget_text(r.budget)
        is_full = r.sampler == FULL
        if is_full:
            t.ref_rows.add(i)
        t.rows.append(
            [
                r.sampler,
                budget_label(r.sampler, b),
                str(r.slides),
                f"{r.patches_per_slide:.1f}",
                "(ref)" if is_full else format_ratio(_num(r.full_patches_per_slide), _num(r.patches_per_slide)),
                format_bytes(_num(r.bytes)),
                "(ref)" if is_full else format_ratio(_num(r.full_bytes), _num(r.bytes)),
            ]
        )
    return t


def mil_costs(agg: pd.DataFrame) -> pd.DataFrame:
    """Wide frame per (task, sampler, budget, mil): mean, std, n of each cost metric, and `<metric>_full`,
    the mean of the full-bag run of the same task and MIL model (NaN when there is none)."""
    sub = agg[agg["metric"].isin(MIL_COST_METRICS)]
    records = []
    for key, grp in sub.groupby(KEYS, dropna=False, sort=False):
        rec = dict(zip(KEYS, key))
        for r in grp.itertuples(index=False):
            rec[f"{r.metric}_mean"], rec[f"{r.metric}_std"], rec[f"{r.metric}_n"] = r.mean, r.std, r.n
        records.append(rec)
    if not records:
        return pd.DataFrame(columns=KEYS)
    wide = pd.DataFrame(records)
    wide["budget"] = wide["budget"].astype("Int64")
    full = {(r["task"], r["mil"]): r for r in records if r["sampler"] == FULL}
    for m in MIL_COST_METRICS:
        if f"{m}_mean" in wide:
            wide[f"{m}_full"] = [
                full.get((t, mil), {}).get(f"{m}_mean", math.nan) for t, mil in zip(wide["task"], wide["mil"])
            ]
    order = sorted(
        range(len(wide)),
        key=lambda i: (
            wide["task"][i],
            wide["mil"][i],
            wide["sampler"][i] != FULL,
            wide["sampler"][i],
            -1 if pd.isna(wide["budget"][i]) else int(wide["budget"][i]),
        ),
    )
    return wide.iloc[order].reset_index(drop=True)


def mil_cost_table(wide: pd.DataFrame) -> Table:
    present = [m for m in MIL_COST_METRICS if f"{m}_mean" in wide and wide[f"{m}_mean"].notna().any()]
    names = {
        "patches_per_bag": "patches per bag",
        "epoch_time_s": "epoch time (s)",
        "peak_rss_mb": "peak RSS (MB)",
        "peak_rss_increase_mb": "RSS increase (MB)",
        "peak_gpu_mem_mb": "peak GPU memory (MB)",
    }
    cols = ["task", "mil", "sampler", "budget", "folds"]
    for m in present:
        cols.append(names[m])
        if m != "patches_per_bag":
            cols.append(f"{names[m].split(' (')[0]} full/this")
    t = Table(cols, [], numeric=set(range(3, len(cols))))
    for i, r in enumerate(wide.to_dict("records")):
        is_full = r["sampler"] == FULL
        if is_full:
            t.ref_rows.add(i)
        folds = max((int(r[f"{m}_n"]) for m in present if not pd.isna(r.get(f"{m}_n"))), default=0)
        row = [
            str(r["task"]),
            str(r["mil"]),
            str(r["sampler"]),
            budget_label(r["sampler"], budget_text(r["budget"])),
            str(folds),
        ]
        for m in present:
            mean, std, n = r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_n"]
            n = 0 if pd.isna(n) else int(n)
            row.append(format_mean_std(float(mean), float(std), n, metric_digits(m)) if n else "")
            if m != "patches_per_bag":
                row.append("(ref)" if is_full else format_ratio(float(r[f"{m}_full"]), float(mean)))
        t.rows.append(row)
    return t
