"""Intrinsic checks of every summary set (sampler × budget), per dataset, with no MIL training.

- lesion recall per slide class: the share of lesion-positive slides whose summary kept a lesion
  patch, and the lesion patches kept / min(K, lesion patches) (`lesions.class_recall_frame`);
- morphology coverage: the share of a slide's ground-truth morphologies kept, and of its rare ones
  (at most `rare_fraction` of the slide) (`lesions.morphology_coverage`); both need synthetic ground truth;
- linear probe: mean-pooled features -> logistic regression, test macro AUROC per CLAM fold (`probe`);
- feature cosine: cos(mean kept feature, mean feature of the full bag), model-free;
- teacher cosine: cos(the study's summarizer on the kept patches, the slide's teacher target)
  (`teacher_check`): wsisum's own objective, shown and never used as evidence.

One pass over the slides: each full bag is read once (features, coords, morphology) and of each
summary only its `indices`; the kept features are the source rows, as the writer stored them.
Writes RUN_DIR/report/intrinsic.csv (tidy: dataset, task, sampler, budget, metric, value, n),
intrinsic_probe.csv (one row per fold, paired-statistics ready) and, with a wsisum sampler,
intrinsic_probe_paired.csv.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wsisum.data.layouts import layout_options
from wsisum.errors import InputError
from wsisum.evaluate.results import FULL
from wsisum.report.lesions import (
    ALL_CLASSES,
    RARE_FRACTION,
    SlideLesion,
    bag_morphology_names,
    class_recall_frame,
    lesion_mask,
    lesion_names,
    morphology_coverage,
    slide_label,
    summary_indices,
)
from wsisum.report.probe import METRIC as PROBE_METRIC
from wsisum.report.probe import probe_rows, probe_tasks
from wsisum.report.rundir import RunDir, SourceBag, SummaryFile, SummarySet, read_source_array
from wsisum.report.teacher_check import FULL_MAX_PATCHES, TeacherCheck, find_checkpoint
from wsisum.seeding import rng_for

log = logging.getLogger(__name__)

INTRINSIC_FILE = "intrinsic.csv"
PROBE_FILE = "intrinsic_probe.csv"
PAIRED_FILE = "intrinsic_probe_paired.csv"
COLUMNS = ("dataset", "task", "sampler", "budget", "metric", "value", "n")
TEACHER_MAX_SLIDES = 16  # per dataset: one CPU core scores ~5 slides/s at the demo's 3 budgets x 5 samplers
REFERENCE = "wsisum"


@dataclass
class Intrinsic:
    table: pd.DataFrame  # tidy, COLUMNS
    probe: pd.DataFrame  # probe.PROBE_COLUMNS, one row per fold
    paired: pd.DataFrame | None = None  # wsisum against each baseline on the probe folds
    notes: list[str] = field(default_factory=list)
    checkpoint: Path | None = None
    teacher_slides: dict[str, int] = field(default_factory=dict)  # dataset -> slides scored
    seconds: float = 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else math.nan


def _teacher_slides(slides: dict[str, list[str]], cap: int | None) -> set[tuple[str, str]]:
    """A seeded choice of at most `cap` slides per dataset (all with `cap=None`)."""
    out = set()
    for ds, ids in slides.items():
        ids = sorted(ids)
        if cap is not None and len(ids) > cap:
            ids = list(rng_for(0, ds, "teacher-cosine").choice(ids, cap, replace=False))
        out |= {(ds, s) for s in ids}
    return out


def _teacher(run: RunDir, ckpt: Path | str | None, device: str, notes: list[str]) -> TeacherCheck | None:
    path = find_checkpoint(run) if ckpt == "auto" else ckpt
    if path is None or run.cohort_root is None:
        return None
    try:
        layout = layout_options((run.study.get("config") or {}).get("cohort") or {})
        return TeacherCheck(path, run.cohort_root, device, FULL_MAX_PATCHES, layout)
    except InputError as err:
        notes.append(f"teacher cosine left out: {err}")
        return None


@dataclass
class _Pass:
    """What the pass over the slides accumulates (one full bag in memory at a time)."""

    run: RunDir
    rare_fraction: float
    teacher: TeacherCheck | None
    scored: set[tuple[str, str]]
    notes: list[str]
    records: list[tuple] = field(default_factory=list)  # (dataset, sampler, budget, metric, value)
    slide_lesions: list[SlideLesion] = field(default_factory=list)
    means: dict[tuple[str, int | None], dict[str, np.ndarray]] = field(default_factory=dict)
    dataset_of: dict[str, str] = field(default_factory=dict)
    teacher_n: dict[str, int] = field(default_factory=dict)

    def slide(self, ds: str, sid: str, items: list[tuple[SummarySet, SummaryFile]]) -> None:
        src = self.run.source_bag(items[0][1])
        if src is None:
            return
        feats = read_source_array(src.path, "features").astype(np.float32, copy=False)
        self.dataset_of[sid] = ds
        subsets: list[tuple[str, int | None, np.ndarray]] = [(FULL, None, np.arange(src.n_patches))]
        for s, f in items:
            idx = summary_indices(f.path)
            if idx.size and (idx.min() < 0 or idx.max() >= src.n_patches):
                raise InputError(f.path, f"indices outside the source bag of {src.n_patches} patches ({src.path})")
            subsets.append((s.sampler, s.budget, idx))
        full_mean = feats.mean(0, dtype=np.float64)
        for sampler, budget, idx in subsets:
            kept_mean = feats[idx].mean(0, dtype=np.float64) if idx.size else np.full_like(full_mean, np.nan)
            self.means.setdefault((sampler, budget), {})[sid] = kept_mean.astype(np.float32)
            self.records.append((ds, sampler, budget, "feature_cosine", _cosine(kept_mean, full_mean)))
        self.ground_truth(ds, sid, src, subsets)
        if self.teacher is not None and (ds, sid) in self.scored:
            self.teacher_cosine(ds, sid, src, feats, subsets)

    def ground_truth(
        self, ds: str, sid: str, src: SourceBag, subsets: list[tuple[str, int | None, np.ndarray]]
    ) -> None:
        """Lesion recall and morphology coverage, where the bag carries per-patch ground truth."""
        morph = self.run.morphology(src)
        naming = None
        if morph is not None:
            naming = lesion_names(self.run.manifest, bag_morphology_names(src.attrs))
        if naming is None:
            return
        try:
            mask = lesion_mask(morph, *naming)
        except InputError as err:
            raise InputError(src.path, err.problem) from None
        label = slide_label(src.attrs)
        for sampler, budget, idx in subsets:
            n_lesion, n_kept_lesion = int(mask.sum()), int(mask[idx].sum())
            self.slide_lesions.append(
                SlideLesion(ds, sid, sampler, budget, src.n_patches, n_lesion, len(idx), n_kept_lesion, label)
            )
            cover, rare, _, _ = morphology_coverage(morph, idx, len(naming[0]), self.rare_fraction)
            self.records.append((ds, sampler, budget, "morphology_coverage", cover))
            self.records.append((ds, sampler, budget, "rare_morphology_coverage", rare))

    def teacher_cosine(self, ds: str, sid: str, src: SourceBag, feats: np.ndarray, subsets: list[tuple]) -> None:
        """Teacher cosine of every summary of the slide; the first bad input turns the check off."""
        try:
            coords = read_source_array(src.path, "coords") if src.has_coords else None
            res = self.teacher.score(ds, sid, feats, coords, [idx for _, _, idx in subsets[1:]])
        except InputError as err:
            self.notes.append(f"teacher cosine left out: {err.path or src.path}: {err.problem}")
            self.teacher, self.scored, self.teacher_n = None, set(), {}
            self.records = [r for r in self.records if r[3] != "teacher_cosine"]
            return
        if res is None:  # no teacher embedding of this slide
            return
        self.teacher_n[ds] = self.teacher_n.get(ds, 0) + 1
        self.records.append((ds, FULL, None, "teacher_cosine", res[1]))
        for (sampler, budget, _), v in zip(subsets[1:], res[0]):
            self.records.append((ds, sampler, budget, "teacher_cosine", v))


def collect_intrinsic(
    run: RunDir,
    *,
    ckpt: Path | str | None = "auto",
    teacher_max_slides: int | None = TEACHER_MAX_SLIDES,
    rare_fraction: float = RARE_FRACTION,
    device: str = "auto",
) -> Intrinsic | None:
    """Every check of the module docstring; None when the run has no summaries or no cohort.

    `ckpt`: the summarizer for the teacher cosine ("auto": RUN_DIR/train/checkpoints, see
    `find_checkpoint`; None: no teacher cosine); `teacher_max_slides`: slides scored per dataset
    (a seeded choice; None = all, 0 = none)."""
    if run.cohort_root is None or not run.summary_sets:
        return None
    t0 = time.perf_counter()
    by_slide: dict[tuple[str, str], list[tuple[SummarySet, SummaryFile]]] = {}
    for s in run.summary_sets:
        for f in s.files.values():
            by_slide.setdefault((f.dataset, f.slide_id), []).append((s, f))
    per_ds: dict[str, list[str]] = {}
    for ds, sid in by_slide:
        per_ds.setdefault(ds, []).append(sid)
    notes: list[str] = []
    teacher = _teacher(run, ckpt, device, notes) if teacher_max_slides != 0 else None
    scored = _teacher_slides(per_ds, teacher_max_slides) if teacher is not None else set()
    acc = _Pass(run, rare_fraction, teacher, scored, notes)
    for (ds, sid), items in sorted(by_slide.items()):
        acc.slide(ds, sid, items)
    table = _aggregate(acc.records, acc.slide_lesions)
    probe_df = probe_rows(acc.means, run.cohort_root, notes=notes)
    task_datasets = _task_datasets(run, acc.dataset_of)
    tasks = _dataset_tasks(run, task_datasets)
    table = pd.concat([table, _probe_summary(probe_df, task_datasets)], ignore_index=True)
    table["task"] = [tasks.get(d, "") if t == "" else t for d, t in zip(table["dataset"], table["task"])]
    table = table[list(COLUMNS)].sort_values(["dataset", "sampler", "budget", "metric"], na_position="first")
    out = Intrinsic(
        table.reset_index(drop=True),
        probe_df,
        _paired(probe_df),
        notes,
        acc.teacher.ckpt_path if acc.teacher is not None else None,
        acc.teacher_n,
        time.perf_counter() - t0,
    )
    log.info("intrinsic checks of %d slides x %d sets in %.1f s", len(by_slide), len(run.summary_sets), out.seconds)
    return out


def _aggregate(records: list[tuple], slide_lesions: list[SlideLesion]) -> pd.DataFrame:
    """Mean over slides (finite values only; `n` counts them) per dataset, sampler, budget and metric."""
    df = pd.DataFrame(records, columns=["dataset", "sampler", "budget", "metric", "value"])
    df["budget"] = df["budget"].astype("Int64")
    df = df[np.isfinite(df["value"].astype(float))]
    keys = ["dataset", "sampler", "budget", "metric"]
    agg = df.groupby(keys, dropna=False, sort=False)["value"].agg(["mean", "count"]).reset_index()
    agg = agg.rename(columns={"mean": "value", "count": "n"})
    rec = class_recall_frame(slide_lesions)
    parts = [agg]
    for metric, col in (("lesion_recall", "recall"), ("lesion_patch_recall", "patch_recall")):
        names = [metric if lab == ALL_CLASSES else f"{metric}:{lab}" for lab in rec["label"]]
        parts.append(rec.assign(metric=names, value=rec[col], n=rec["lesion_slides"])[[*keys, "value", "n"]])
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(len(p) for p in parts) else agg
    out["task"] = ""
    return out


def _task_datasets(run: RunDir, dataset_of: dict[str, str]) -> dict[str, list[str]]:
    """Task -> the datasets its labelled slides come from (those with summaries)."""
    out = {}
    for task, (labels_path, _) in probe_tasks(run.cohort_root).items():
        try:
            ids = pd.read_csv(labels_path, dtype=str, usecols=["slide_id"])["slide_id"].str.strip()
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        out[task] = sorted({dataset_of[s] for s in ids if s in dataset_of})
    return out


def _dataset_tasks(run: RunDir, task_datasets: dict[str, list[str]]) -> dict[str, str]:
    """Dataset -> its task: the cohort manifest's `dataset_tasks`, else the tasks whose labels list its slides."""
    manifest = (run.manifest or {}).get("dataset_tasks") or {}
    found: dict[str, list[str]] = {}
    for task, dss in task_datasets.items():
        for ds in dss:
            found.setdefault(ds, []).append(task)
    return {ds: ",".join(ts) for ds, ts in found.items()} | {str(k): str(v) for k, v in manifest.items()}


def _probe_summary(probe_df: pd.DataFrame, task_datasets: dict[str, list[str]]) -> pd.DataFrame:
    """Probe AUROC mean over folds (finite values; `n` folds) as intrinsic.csv rows."""
    rows = []
    for (task, sampler, budget), grp in probe_df.groupby(["task", "sampler", "budget"], dropna=False, sort=False):
        v = grp["value"].to_numpy(float)
        v = v[np.isfinite(v)]
        ds = "+".join(task_datasets.get(task, [])) or task
        mean = float(v.mean()) if len(v) else math.nan
        row = (ds, task, sampler, budget, PROBE_METRIC, mean, len(v))
        rows.append(dict(zip(COLUMNS, row)))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["budget"] = df["budget"].astype("Int64")
    return df


def _paired(probe_df: pd.DataFrame) -> pd.DataFrame | None:
    """wsisum against every baseline at each budget on the same folds (None without a wsisum sampler)."""
    if probe_df.empty or REFERENCE not in set(probe_df["sampler"]):
        return None
    from wsisum.evaluate.paired import winner_matrix

    paired = winner_matrix(probe_df, REFERENCE, PROBE_METRIC)
    return None if paired.empty else paired
