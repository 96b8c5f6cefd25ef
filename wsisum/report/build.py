"""`build_report(run_dir)`: read a study's saved outputs, write RUN_DIR/report/ (Markdown, HTML, CSVs, PNGs).

Everything comes from files the pipeline saved (summary bags, metrics, study.json, the cohort it
names), so `wsisum-report RUN_DIR` regenerates the same report at any time, and nothing is trained.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.data.output_faults import check_writable
from wsisum.evaluate.aggregate import FULL, aggregate
from wsisum.evaluate.paired import REFERENCE
from wsisum.evaluate.results import METRICS_FILE
from wsisum.report.annotated import CSV_FILE as ANNOTATED_CSV
from wsisum.report.annotated import annotated_report
from wsisum.report.comparisons import PairedResults, paired_results, paired_sections
from wsisum.report.cost import mil_cost_table, mil_costs, storage_costs, storage_table
from wsisum.report.heatmaps import heatmap_budget as checked_heatmap_budget
from wsisum.report.heatmaps import write_heatmaps
from wsisum.report.intrinsic_report import intrinsic_report
from wsisum.report.lesions import SMALL_LESION_PATCHES, collect_slide_lesions, retention_frame, retention_table
from wsisum.report.plots import lesion_retention_plot, metric_vs_budget, paired_difference_plot
from wsisum.report.render import Document, Figure, Section, to_html, to_markdown
from wsisum.report.retrieval import TABLE_FILE as RETRIEVAL_TABLE
from wsisum.report.retrieval import retrieval_section
from wsisum.report.retrieval_paired import PAIRED_FILE as RETRIEVAL_PAIRED
from wsisum.report.retrieval_paired import retrieval_paired_section
from wsisum.report.rundir import RunDir, load_results, load_retrieval, open_run_dir
from wsisum.report.tables import RESULT_METRICS, Table, results_table
from wsisum.run_layout import EVALUATE_DIR, REPORT_HTML, REPORT_MD, RESULTS_FILE, RETRIEVE_DIR
from wsisum.sampling.cluster_cache import format_stats

log = logging.getLogger(__name__)

FIGURES = "figures"
CSV_FILES = ("results_table.csv", "cost_storage.csv", "cost_mil.csv", "lesion_retention.csv", ANNOTATED_CSV)
PAIRED_CSV = ("paired.csv", "retention.csv", "ablation.csv")  # from `comparisons.PairedResults.frames`
PAIRED_FIG = "paired_difference_vs_budget.png"


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, df: pd.DataFrame) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
    return path


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= _flat(v, f"{key}.")
        else:
            out[key] = v
    return out


def _brief(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def run_section(run: RunDir, tasks: list[str]) -> Section:
    sec = Section("Run", "run")
    cohort = run.study.get("cohort_root")
    samplers = sorted({s.sampler for s in run.summary_sets})
    budgets = sorted({s.budget for s in run.summary_sets if s.budget is not None})
    sec.blocks.append(f"Cohort `{cohort}`." if cohort else "Cohort unknown (no `cohort_root` in study.json).")
    if run.summary_sets:
        sec.blocks.append(
            f"Summaries of {len(samplers)} sampler(s) ({', '.join(samplers)}) at budget(s) "
            f"{', '.join(map(str, budgets))} patches per slide, in `summaries/<sampler>_<budget>/`: "
            + ", ".join(f"`{s.name}` ({len(s.files)} slides)" for s in run.summary_sets)
            + "."
        )
    if tasks:
        sec.blocks.append(f"Downstream tasks: {', '.join(tasks)}.")
    timings = _flat(run.study.get("timings_s") or {}) if isinstance(run.study.get("timings_s"), Mapping) else {}
    stages = run.study.get("stages") if isinstance(run.study.get("stages"), Mapping) else {}
    errors = run.study.get("errors") if isinstance(run.study.get("errors"), Mapping) else {}
    names = list(dict.fromkeys([*stages, *timings]))
    clusters = run.study.get("clusters") if isinstance(run.study.get("clusters"), Mapping) else {}
    if clusters:
        total: dict[str, int] = {}
        for counts in clusters.values():
            for k, v in counts.items():
                total[k] = total.get(k, 0) + int(v)
        sec.blocks.append(
            f"Clustering cache (one k-means per slide and k for the whole study, `cache/clusters/`): "
            f"{format_stats(total)} over all stages."
        )
    if names:
        t = Table(["stage", "wall time (s)", "detail", "clustering cache"], [], numeric={1})
        for name in names:
            secs = timings.get(name)
            ok = isinstance(secs, int | float) and not isinstance(secs, bool) and math.isfinite(secs)
            detail = _brief(stages[name]) if name in stages else ""
            if errors.get(name):
                detail = f"{detail}: {_brief(errors[name], 160)}" if detail else _brief(errors[name], 160)
            counts = clusters.get(name)
            t.rows.append([name, f"{secs:.1f}" if ok else "", detail, format_stats(counts) if counts else ""])
        sec.blocks.append(t)
    return sec


def results_section(agg: pd.DataFrame | None, figs: list[Path], metric: str) -> Section:
    sec = Section("Results", "results")
    if agg is None or agg.empty:
        sec.blocks.append(f"No evaluation results yet (no `{RESULTS_FILE}` and no `{EVALUATE_DIR}/**/{METRICS_FILE}`).")
        return sec
    sec.blocks.append(
        "Test metrics, mean ± sample standard deviation (ddof 1) over (fold, seed) replicates, one row per "
        "task, MIL model, sampler and budget; the shaded `full` row of each task is the reference trained on "
        "the full bags. Bold: the best summary of the task by AUROC (which samplers truly differ: the paired "
        "tables above). `epoch time full/this`: how many times faster a training epoch is on these bags than "
        "on the full bags."
    )
    sec.blocks.append(results_table(agg, RESULT_METRICS))
    for p in figs:
        mil = p.stem.rsplit("_vs_budget_", 1)[-1]
        sec.blocks.append(
            Figure(
                p,
                f"{metric.replace('test_', 'test ')} versus budget, {mil}: a panel per task, a line per sampler "
                "(mean ± std over replicates); dashed, the full-bag result with its ± std band.",
            )
        )
    return sec


def cost_section(storage: pd.DataFrame, mil: pd.DataFrame) -> Section:
    sec = Section("Cost", "cost")
    if not storage.empty:
        sec.blocks.append(
            "Bags: mean patches per slide and bytes on disk of each summary set, against the cohort's full "
            "bags (`h5_files/`) of the same slides."
        )
        sec.blocks.append(storage_table(storage))
    if not mil.empty:
        sec.blocks.append(
            "MIL training on these bags, from the evaluation metrics (mean ± std over folds): patches per "
            "bag, wall time per training epoch, peak resident memory of the process (and its growth during "
            "training, where recorded); `full/this` is the full-bag value divided by this one."
        )
        sec.blocks.append(mil_cost_table(mil))
    if storage.empty and mil.empty:
        sec.blocks.append("No summaries and no cost metrics in this run.")
    return sec


def lesion_section(df: pd.DataFrame, fig: Path | None, dataset_tasks: Mapping[str, str], small: int) -> Section:
    sec = Section("Lesion retention", "lesions")
    sec.blocks.append(
        "Synthetic cohorts carry each patch's ground-truth morphology, so we can check whether a summary "
        "kept the lesion. `lesion kept`: the share (and count) of lesion-positive slides whose summary holds "
        f"at least one lesion patch; `lesion ≤ {small} patches kept`: the same for the smallest lesions "
        "(ITC-like, a handful of patches), where summaries differ most; `lesion share of kept patches`: mean "
        "over lesion-positive slides of the fraction of kept patches that are lesion, against the same "
        "fraction in the full bag (what a uniformly random summary keeps on average)."
    )
    sec.blocks.append(retention_table(df, dataset_tasks, small))
    if fig is not None:
        sec.blocks.append(
            Figure(
                fig,
                "Lesion-positive slides whose summary kept a lesion patch, versus budget (dotted: smallest lesions).",
            )
        )
    return sec


def heatmap_section(budget: int | None, figs: list[Path], has_lesions: bool) -> Section:
    sec = Section("Selection heatmaps", "heatmaps")
    if not figs:
        sec.blocks.append("No summaries to draw.")
        return sec
    gt = " (light red: lesion patches of the ground truth)" if has_lesions else ""
    sec.blocks.append(
        f"Which patches each sampler kept at budget {budget}, drawn from the coords alone: every patch of the "
        f"slide is a faint square on the patch grid{gt}; kept patches are solid, coloured by the summary's "
        "per-patch score where the sampler gives one (its own scale per panel)"
        + ("; a red outline marks a kept lesion patch, and a red ring a small lesion." if has_lesions else ".")
    )
    for p in figs:
        sec.blocks.append(
            Figure(p, f"{p.stem.split('_', 2)[-1]}: selection at budget {budget}, one panel per sampler.")
        )
    return sec


def write_results(
    run: RunDir, out: Path, fig_dir: Path, metric: str, candidate: str, written: dict[str, Path]
) -> tuple[pd.DataFrame | None, list[Path], PairedResults | None, Path | None]:
    """The results table, the metric-versus-budget plots and the paired comparisons with their plot
    (None / [] without evaluations); the files written are added to `written`."""
    df = load_results(run)
    agg = None if df is None else aggregate(df)
    if df is not None:
        written["results"] = run.root / RESULTS_FILE
        written["results_table"] = _write_csv(out / CSV_FILES[0], agg)
    figs = metric_vs_budget(agg, fig_dir, metric) if agg is not None else []
    pair = paired_results(df, candidate, metric) if df is not None else None
    for key, frame in (pair.frames() if pair is not None else {}).items():
        if not frame.empty:
            written[key] = _write_csv(out / f"{key}.csv", frame)
    pair_fig = None if pair is None else paired_difference_plot(pair.matrix, fig_dir / PAIRED_FIG, candidate, metric)
    return agg, figs, pair, pair_fig


def write_lesions(
    run: RunDir, out: Path, fig_dir: Path, dataset_tasks: dict, small_lesion_patches: int, written: dict[str, Path]
) -> tuple[pd.DataFrame | None, Path | None]:
    """Lesion retention of the summaries and its plot, where the cohort has lesion ground truth."""
    slide_lesions = collect_slide_lesions(run)
    retention = retention_frame(slide_lesions, small_lesion_patches) if slide_lesions else None
    lesion_fig = None
    if retention is not None:
        written["lesion_retention"] = _write_csv(out / CSV_FILES[3], retention)
        lesion_fig = lesion_retention_plot(
            retention, fig_dir / "lesion_retention_vs_budget.png", dataset_tasks, small_lesion_patches
        )
    return retention, lesion_fig


def write_costs(
    run: RunDir, agg: pd.DataFrame | None, out: Path, written: dict[str, Path]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Storage of the summaries against the full bags, and the MIL training cost (from the metrics)."""
    storage = storage_costs(run)
    mil = mil_costs(agg) if agg is not None else pd.DataFrame()
    if not storage.empty:
        written["cost_storage"] = _write_csv(out / CSV_FILES[1], storage)
    if not mil.empty:
        written["cost_mil"] = _write_csv(out / CSV_FILES[2], mil)
    return storage, mil


def write_annotated(
    out: Path, written: dict[str, Path], section: Section | None, frame: pd.DataFrame | None
) -> list[Section]:
    """The annotated-slides section (`annotated.annotated_report`) and its CSV; [] without annotations."""
    if frame is not None:
        written["annotated_lesions"] = _write_csv(out / CSV_FILES[4], frame)
    return [] if section is None else [section]


def remove_stale(out: Path, fig_dir: Path, all_figs: list[Path], written: dict[str, Path]) -> None:
    """Remove outputs of an earlier report that this one no longer has (no data now)."""
    keep = {p.resolve() for p in all_figs} | {p.resolve() for p in written.values()}
    names = (*CSV_FILES, *PAIRED_CSV, RETRIEVAL_TABLE, RETRIEVAL_PAIRED)
    stale = [*fig_dir.glob("*.png"), *(out / name for name in names)]
    for path in stale:
        if path.is_file() and path.resolve() not in keep:
            path.unlink()


def retrieval_and_intrinsic_sections(run: RunDir, out: Path, fig_dir: Path, written: dict[str, Path]) -> list[Section]:
    """The retrieval section (where the study ran retrieval) and the intrinsic checks (where it has
    summaries and its cohort); their files are added to `written`."""
    sections = []
    retrieval, retrieval_files = retrieval_section(load_retrieval(run), out, fig_dir)
    if retrieval is not None:
        sections.append(retrieval)
        paired_retrieval, paired_files = retrieval_paired_section(run.root / RETRIEVE_DIR, out)
        if paired_retrieval is not None:
            sections.append(paired_retrieval)
        written |= paired_files
    written |= retrieval_files
    intrinsic_sections, intrinsic_csv = intrinsic_report(run, out)  # [] without summaries or cohort
    written |= intrinsic_csv
    return sections + intrinsic_sections


def build_report(
    run_dir: str | Path,
    *,
    heatmap_slides: int = 3,
    heatmap_budget: int | None = None,
    metric: str = "test_auroc",
    small_lesion_patches: int = SMALL_LESION_PATCHES,
    candidate: str = REFERENCE,
    annotations: str | Path | None = None,
    lesion_classes: Sequence[str] | None = None,
    annotation_patch_size: int | None = None,
) -> dict[str, Path]:
    """Write RUN_DIR/report/{report.md, report.html, *.csv, figures/*.png}; returns name -> path.

    Keys: `markdown`, `html`, `results` (RUN_DIR/results.csv, regenerated from evaluate/ when missing
    or stale), `results_table`, `cost_storage`, `cost_mil`, `lesion_retention`, `paired`, `retention`,
    `ablation`, `annotated_lesions` (CSVs, where there is data) and one key per figure (its file stem).
    The paired tables compare `candidate` with every baseline on the same (fold, seed) replicates by
    `metric`. `annotations`, `lesion_classes`, `annotation_patch_size`: see `report.annotated`.
    """
    run = open_run_dir(run_dir)
    name = run.root.resolve().name
    hm_budget = checked_heatmap_budget(run, heatmap_budget)  # a bad budget fails before anything is written
    annotated = annotated_report(run, annotations, lesion_classes, annotation_patch_size)  # so does a bad dir
    out = check_writable(run.report_dir, "report directory")
    fig_dir = out / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    agg, figs, pair, pair_fig = write_results(run, out, fig_dir, metric, candidate, written)

    storage, mil = write_costs(run, agg, out, written)
    dataset_tasks = (run.manifest or {}).get("dataset_tasks") or {}
    retention, lesion_fig = write_lesions(run, out, fig_dir, dataset_tasks, small_lesion_patches, written)

    hm_figs = write_heatmaps(run, fig_dir, heatmap_slides, hm_budget)

    tasks = sorted(agg["task"].unique()) if agg is not None else []
    # paired comparisons, then results; the run's stage log (long for a full study) closes the report
    sections = [*paired_sections(pair, pair_fig), results_section(agg, figs, metric), cost_section(storage, mil)]
    if retention is not None:
        sections.append(lesion_section(retention, lesion_fig, dataset_tasks, small_lesion_patches))
    sections += write_annotated(out, written, *annotated)
    sections += retrieval_and_intrinsic_sections(run, out, fig_dir, written)
    sections.append(heatmap_section(hm_budget, hm_figs, retention is not None))
    sections.append(run_section(run, tasks))
    has_full = agg is not None and (agg["sampler"] == FULL).any()
    intro = [f"Study run `{name}`: summaries versus full bags, regenerated by `wsisum-report RUN_DIR`."]
    notes = list(run.notes)
    if agg is not None and not has_full:
        notes.append("no full-bag evaluation (`evaluate/<task>/full/`): the tables have no reference rows.")
    doc = Document(f"wsisum study report: {name}", intro, sections, notes)

    all_figs = [*([pair_fig] if pair_fig else []), *figs, *([lesion_fig] if lesion_fig else []), *hm_figs]
    for p in all_figs:
        written[p.stem] = p
    remove_stale(out, fig_dir, all_figs, written)
    written["markdown"] = _write_text(out / REPORT_MD, to_markdown(doc, out))
    written["html"] = _write_text(out / REPORT_HTML, to_html(doc))
    return written
