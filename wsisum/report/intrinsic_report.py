"""The report's "Intrinsic checks" section and its CSVs, from `intrinsic.collect_intrinsic`.

One table: a row per dataset (task) × sampler × budget, full bags first, a column per check; and,
where the study has the wsisum sampler, the paired probe table (wsisum minus each baseline on the
same folds). Checks without their input (no ground truth, no checkpoint) are columns left out; no
input for any check means no section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.evaluate.results import FULL
from wsisum.report.intrinsic import INTRINSIC_FILE, PAIRED_FILE, PROBE_FILE, REFERENCE, Intrinsic, collect_intrinsic
from wsisum.report.lesions import RARE_FRACTION
from wsisum.report.probe import METRIC as PROBE_METRIC
from wsisum.report.render import Section
from wsisum.report.rundir import RunDir
from wsisum.report.tables import Table, budget_label, paired_table

FILES = (INTRINSIC_FILE, PROBE_FILE, PAIRED_FILE)
# (metric of intrinsic.csv, column header); lesion recall per class is one column of its own
COLUMNS = (
    ("lesion_patch_recall", "lesion patches kept / min(K, lesion)"),
    ("morphology_coverage", "morphologies kept"),
    ("rare_morphology_coverage", "rare morphologies kept"),
    (PROBE_METRIC, "probe AUROC"),
    ("feature_cosine", "cos(mean, full mean)"),
    ("teacher_cosine", "teacher cos (wsisum's objective)"),
)
PER_CLASS = "lesion kept, per class"


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
    return path


def _class_order(manifest: Mapping | None, task: str, found: list[str]) -> list[str]:
    """The task's class order from the cohort manifest (negative ... macro, grades benign -> invasive)."""
    order = [str(c) for c in ((manifest or {}).get("tasks") or {}).get(task, [])]
    return [c for c in order if c in found] + sorted(c for c in found if c not in order)


def _probe_cells(res: Intrinsic) -> dict[tuple[str, str, object], str]:
    """(task, sampler, budget) -> 'mean ± std' over folds (sample std, as the results table)."""
    out = {}
    for (task, sampler, budget), grp in res.probe.groupby(["task", "sampler", "budget"], dropna=False):
        v = grp["value"].dropna().to_numpy(float)
        std = f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""
        out[(task, sampler, None if pd.isna(budget) else int(budget))] = f"{v.mean():.3f}{std}" if len(v) else "n/a"
    return out


def intrinsic_table(res: Intrinsic, manifest: Mapping | None = None) -> Table:
    df = res.table
    probe_cells = _probe_cells(res)
    has_class = df["metric"].str.startswith("lesion_recall:").any()
    shown = [(m, h) for m, h in COLUMNS if (df["metric"] == m).any()]
    table = Table(
        ["dataset (task)", "sampler", "budget", *([PER_CLASS] if has_class else []), *(h for _, h in shown)], []
    )
    table.numeric = set(range(3, len(table.columns)))
    keys = df[["dataset", "task", "sampler", "budget"]].drop_duplicates()
    keys = keys.assign(
        _o=[(d, s != FULL, s, -1 if pd.isna(b) else int(b)) for d, s, b in zip(keys.dataset, keys.sampler, keys.budget)]
    )
    for i, (ds, task, sampler, budget) in enumerate(keys.sort_values("_o").drop(columns="_o").itertuples(index=False)):
        b = None if pd.isna(budget) else int(budget)
        sub = df[(df["dataset"] == ds) & (df["sampler"] == sampler)]
        sub = sub[sub["budget"].isna()] if b is None else sub[sub["budget"] == b]
        vals = dict(zip(sub["metric"], sub["value"]))
        row = [
            f"{ds} ({task})" if task and task != ds else ds,
            sampler,
            budget_label(sampler, "" if b is None else str(b)),
        ]
        if has_class:
            per = {m.split(":", 1)[1]: v for m, v in vals.items() if m.startswith("lesion_recall:")}
            row.append(" · ".join(f"{c} {per[c]:.2f}" for c in _class_order(manifest, task, list(per))))
        for metric, _ in shown:
            if metric == PROBE_METRIC:
                row.append(probe_cells.get((task, sampler, b), ""))
                continue
            v = vals.get(metric)
            row.append("" if v is None or math.isnan(v) else f"{v:.3f}")
        if sampler == FULL:
            table.ref_rows.add(i)
        table.rows.append(row)
    return table


def intrinsic_section(res: Intrinsic, manifest: Mapping | None = None) -> Section:
    sec = Section("Intrinsic checks", "intrinsic")
    metrics = set(res.table["metric"])
    sec.blocks.append(
        "Cheap checks of every summary set, with no MIL model trained: one row per dataset, sampler and budget, "
        "each number a mean over the dataset's slides (shaded: the full bags; every number, with its count, "
        "in `intrinsic.csv`)."
    )
    said = []
    if any(m.startswith("lesion_recall") for m in metrics):
        said.append(
            f"`{PER_CLASS}`: per slide class, the share of lesion-positive slides whose summary holds at least "
            "one lesion patch. `lesion patches kept / min(K, lesion)`: the lesion patches kept over the most "
            "that K kept patches could hold."
        )
    if "morphology_coverage" in metrics:
        said.append(
            "`morphologies kept`: the share of the slide's ground-truth morphologies (at least one patch in the "
            "full bag) with at least one kept patch; `rare morphologies kept`: the same over the morphologies "
            f"on at most {RARE_FRACTION:.0%} of the slide's patches, on the slides that have one."
        )
    if PROBE_METRIC in metrics:
        said.append(
            "`probe AUROC`: the bags' mean-pooled features, a multinomial L2 logistic regression fitted on each "
            "fold's train split, test macro AUROC; mean ± std over folds (`intrinsic_probe.csv`: one row per fold)."
        )
    said.append("`cos(mean, full mean)`: cosine of the mean kept feature and the full bag's mean feature (model-free).")
    if "teacher_cosine" in metrics:
        n = ", ".join(f"{ds} {k}" for ds, k in sorted(res.teacher_slides.items()))
        name = res.checkpoint.name if res.checkpoint is not None else "the study's checkpoint"
        said.append(
            "`teacher cos`: cosine of the pretrained summarizer's slide outputs on the kept patches and the "
            f"slide's teacher target (`{name}`, scored as the wsisum sampler scores a candidate; slides scored: "
            f"{n}). This is wsisum's own search objective, so it is shown here, not used as evidence."
        )
    sec.blocks.append(" ".join(said))
    sec.blocks.append(intrinsic_table(res, manifest))
    if res.paired is not None:
        sec.blocks.append(
            f"Linear probe, paired: {REFERENCE} minus each baseline on the same folds (mean AUROC "
            "difference, 95 % bootstrap CI, wins/pairs; ▲ win / ▼ loss when the CI excludes 0)."
        )
        sec.blocks.append(paired_table(res.paired))
    for note in res.notes:
        sec.blocks.append(f"Note: {note}")
    return sec


def intrinsic_report(run: RunDir, out_dir: Path, **kwargs) -> tuple[list[Section], dict[str, Path]]:
    """([the section] or [], written CSVs by stem); CSVs of an earlier report without data are removed.
    kwargs go to `intrinsic.collect_intrinsic`."""
    res = collect_intrinsic(run, **kwargs)
    frames = {}
    if res is not None and not res.table.empty:
        frames = {INTRINSIC_FILE: res.table, PROBE_FILE: res.probe}
        if res.paired is not None:
            frames[PAIRED_FILE] = res.paired
    written = {Path(name).stem: _write_csv(out_dir / name, df) for name, df in frames.items() if not df.empty}
    for name in FILES:
        if name not in frames and (out_dir / name).is_file():
            (out_dir / name).unlink()
    if not frames:
        return [], {}
    return [intrinsic_section(res, run.manifest)], written
