"""Lesion retention: did a summary keep the lesion? Synthetic cohorts only (bags carry ground truth).

A synthetic bag has a per-patch `morphology` (N,) code; the cohort's `cohort.json` names the codes
(`morphologies`) and which of them are lesions (`lesion_morphologies`, per task). A bag's own
`morphology_names` attr, where present, overrides the names; without a manifest, every name outside
the background and artifact vocabularies is a lesion. These names are `wsisum.data.ground_truth`'s, which the
synthetic writer uses too: the report reads the cohort's files, never the generator. A slide is
lesion-positive when at least one of its patches is a lesion. For each dataset × sampler × budget the report gives

- `hit_rate`: the fraction of lesion-positive slides whose summary kept at least one lesion patch;
- `small_hit_rate`: the same over slides whose lesion has at most `small` patches (ITC-like), where
  summaries differ most;
- `kept_lesion_fraction`: the mean, over lesion-positive slides, of the fraction of kept patches that
  are lesion, next to `full_lesion_fraction`, the same mean for the full bags (what a uniformly random
  summary keeps on average).

The intrinsic checks (`wsisum.report.intrinsic`) add, per slide class (`class_recall_frame`), the hit
rate and the lesion patches kept relative to what the budget allows, min(K, lesion patches); and
(`morphology_coverage`) the share of a slide's ground-truth morphologies a summary keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsisum.data.ground_truth import (
    ARTIFACT_MORPHOLOGIES,
    BACKGROUND_MORPHOLOGIES,
    MANIFEST_LESIONS,
    MANIFEST_MORPHOLOGIES,
    MORPHOLOGY_NAMES_ATTR,
)
from wsisum.data.hdf5 import reading_h5
from wsisum.errors import InputError
from wsisum.evaluate.aggregate import FULL
from wsisum.report.rundir import RunDir
from wsisum.report.tables import Table, budget_label

SMALL_LESION_PATCHES = 5
ALL_CLASSES = "all"  # the `label` of class_recall_frame rows that pool every class
RARE_FRACTION = 0.01  # a morphology on at most 1 % of a slide's patches is rare on that slide
RETENTION_COLUMNS = [
    "dataset",
    "sampler",
    "budget",
    "lesion_slides",
    "hits",
    "hit_rate",
    "small_slides",
    "small_hits",
    "small_hit_rate",
    "kept_lesion_fraction",
    "full_lesion_fraction",
    "artifact_slides",
    "kept_artifact_fraction",
    "full_artifact_fraction",
]


@dataclass(frozen=True)
class SlideLesion:
    """One summary of one slide against the slide's ground truth."""

    dataset: str
    slide_id: str
    sampler: str
    budget: int | None
    n_patches: int
    n_lesion: int
    n_kept: int
    n_kept_lesion: int
    label: str | None = None  # the slide's class (bag attr `label`), for recall per class
    n_artifact: int = 0  # artifact patches of the slide (pen, fold, blur, bubble, edge)
    n_kept_artifact: int = 0

    @property
    def patch_recall(self) -> float:
        """Lesion patches kept / the most the budget could keep, min(K, lesion patches); NaN without lesion."""
        room = min(self.n_kept, self.n_lesion)
        return self.n_kept_lesion / room if room else math.nan


def lesion_names(
    manifest: Mapping[str, Any] | None, bag_names: Sequence[str] | None
) -> tuple[list[str], set[str]] | None:
    """(code -> name list, lesion names) from the manifest and/or a bag's `morphology_names`; None if unknown."""
    names = list(bag_names) if bag_names else list((manifest or {}).get(MANIFEST_MORPHOLOGIES) or [])
    if not names:
        return None
    per_task = (manifest or {}).get(MANIFEST_LESIONS)
    if isinstance(per_task, Mapping) and per_task:
        lesions = {str(n) for v in per_task.values() for n in v}
    else:  # no manifest: every morphology that is neither background tissue nor an artifact
        lesions = {n for n in names if n not in BACKGROUND_MORPHOLOGIES and n not in ARTIFACT_MORPHOLOGIES}
    return names, lesions


def lesion_mask(morphology: np.ndarray, names: Sequence[str], lesions: set[str]) -> np.ndarray:
    """Boolean (N,): which patches are lesion. A code outside `names` is an error, not background."""
    morphology = np.asarray(morphology)
    if morphology.size and (morphology.min() < 0 or morphology.max() >= len(names)):
        raise InputError(
            None, f"morphology codes {int(morphology.min())}..{int(morphology.max())} outside the {len(names)} names"
        )
    is_lesion = np.array([n in lesions for n in names], dtype=bool)
    return is_lesion[morphology.astype(np.int64)]


def slide_lesion(mask: np.ndarray, indices: np.ndarray) -> tuple[int, int]:
    """(lesion patches of the slide, lesion patches among the kept `indices`)."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(mask)):
        raise InputError(None, f"summary indices outside the source bag of {len(mask)} patches")
    return int(mask.sum()), int(mask[indices].sum())


def bag_morphology_names(attrs: Mapping[str, Any]) -> list[str] | None:
    raw = attrs.get(MORPHOLOGY_NAMES_ATTR)
    if not raw:
        return None
    try:
        names = json.loads(raw) if isinstance(raw, str) else list(raw)
    except (TypeError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def summary_indices(path: str | Path) -> np.ndarray:
    """The `indices` (K,) into the source bag that every summary bag records (nothing else is read:
    a report reads thousands of summaries)."""
    with reading_h5(path) as f:
        if "indices" not in f:
            raise InputError(path, "no 'indices' dataset: cannot tell which source patches were kept")
        return np.asarray(f["indices"][()], dtype=np.int64).reshape(-1)


def slide_label(attrs: Mapping[str, Any]) -> str | None:
    """The class a synthetic bag records in its attrs (None for other cohorts)."""
    label = attrs.get("label")
    return None if label in (None, "") else str(label)


def collect_slide_lesions(run: RunDir) -> list[SlideLesion]:
    """Every summary of the run against its source bag's ground truth; [] when no bag carries any."""
    out: list[SlideLesion] = []
    for s in run.summary_sets:
        for f in s.files.values():
            src = run.source_bag(f)
            if src is None or not src.has_morphology:
                continue
            naming = lesion_names(run.manifest, bag_morphology_names(src.attrs))
            if naming is None:
                continue
            try:
                mask = lesion_mask(run.morphology(src), *naming)
            except InputError as err:
                raise InputError(err.path or src.path, err.problem) from None
            indices = summary_indices(f.path)
            try:
                n_lesion, n_kept_lesion = slide_lesion(mask, indices)
            except InputError as err:
                raise InputError(f.path, f"{err.problem} ({src.path})") from None
            n_artifact, n_kept_artifact = slide_lesion(
                lesion_mask(run.morphology(src), naming[0], set(ARTIFACT_MORPHOLOGIES)), indices
            )
            out.append(
                SlideLesion(
                    f.dataset,
                    f.slide_id,
                    s.sampler,
                    s.budget,
                    src.n_patches,
                    n_lesion,
                    f.n_kept,
                    n_kept_lesion,
                    slide_label(src.attrs),
                    n_artifact,
                    n_kept_artifact,
                )
            )
    return out


def artifact_columns(slides: Sequence[SlideLesion], full: bool = False) -> dict[str, float]:
    """Over the slides with artifacts: the mean artifact share of their summaries (of the whole slide
    with `full`) and of the slides themselves. A good summary holds no more than the slide does."""
    art = [s for s in slides if s.n_artifact > 0]
    slide_share = float(np.mean([s.n_artifact / s.n_patches for s in art])) if art else math.nan
    kept = slide_share if full or not art else float(np.mean([s.n_kept_artifact / s.n_kept for s in art]))
    return {"artifact_slides": len(art), "kept_artifact_fraction": kept, "full_artifact_fraction": slide_share}


def retention_frame(slides: Iterable[SlideLesion], small: int = SMALL_LESION_PATCHES) -> pd.DataFrame:
    """Aggregate per (dataset, sampler, budget); lesion-negative slides do not enter any rate."""
    groups: dict[tuple[str, str, int | None], list[SlideLesion]] = {}
    for s in slides:
        groups.setdefault((s.dataset, s.sampler, s.budget), []).append(s)
    rows = []
    full_refs: dict[str, dict[str, SlideLesion]] = {}
    for (ds, sampler, budget), grp in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        pos = [s for s in grp if s.n_lesion > 0]
        small_pos = [s for s in pos if s.n_lesion <= small]
        hits = sum(s.n_kept_lesion > 0 for s in pos)
        small_hits = sum(s.n_kept_lesion > 0 for s in small_pos)
        rows.append(
            {
                "dataset": ds,
                "sampler": sampler,
                "budget": budget,
                "lesion_slides": len(pos),
                "hits": hits,
                "hit_rate": hits / len(pos) if pos else math.nan,
                "small_slides": len(small_pos),
                "small_hits": small_hits,
                "small_hit_rate": small_hits / len(small_pos) if small_pos else math.nan,
                "kept_lesion_fraction": float(np.mean([s.n_kept_lesion / s.n_kept for s in pos])) if pos else math.nan,
                "full_lesion_fraction": float(np.mean([s.n_lesion / s.n_patches for s in pos])) if pos else math.nan,
                **artifact_columns(grp),
            }
        )
        for s in grp:
            full_refs.setdefault(ds, {})[s.slide_id] = s
    for ds in sorted(full_refs):  # the full bags keep every lesion: the reference row of each dataset
        pos = [s for s in full_refs[ds].values() if s.n_lesion > 0]
        small_pos = [s for s in pos if s.n_lesion <= small]
        frac = float(np.mean([s.n_lesion / s.n_patches for s in pos])) if pos else math.nan
        rows.append(
            {
                "dataset": ds,
                "sampler": FULL,
                "budget": None,
                "lesion_slides": len(pos),
                "hits": len(pos),
                "hit_rate": 1.0 if pos else math.nan,
                "small_slides": len(small_pos),
                "small_hits": len(small_pos),
                "small_hit_rate": 1.0 if small_pos else math.nan,
                "kept_lesion_fraction": frac,
                "full_lesion_fraction": frac,
                **artifact_columns(list(full_refs[ds].values()), full=True),
            }
        )
    df = pd.DataFrame(rows, columns=RETENTION_COLUMNS)
    df["budget"] = df["budget"].astype("Int64")
    df["_order"] = [
        (r.dataset, r.sampler != FULL, r.sampler, -1 if pd.isna(r.budget) else int(r.budget)) for r in df.itertuples()
    ]
    return df.sort_values("_order").drop(columns="_order").reset_index(drop=True)


CLASS_RECALL_COLUMNS = ["dataset", "sampler", "budget", "label", "lesion_slides", "hits", "recall", "patch_recall"]


def class_recall_frame(slides: Iterable[SlideLesion]) -> pd.DataFrame:
    """Per (dataset, sampler, budget, slide class) over lesion-positive slides: `recall`, the share whose
    summary kept >= 1 lesion patch, and `patch_recall`, the mean of kept lesion patches / min(K, lesion
    patches). Each group also has a row with label `ALL_CLASSES`; slides without a label enter only that."""
    groups: dict[tuple, list[SlideLesion]] = {}
    for s in slides:
        if s.n_lesion == 0:
            continue
        for label in (ALL_CLASSES, s.label) if s.label is not None else (ALL_CLASSES,):
            groups.setdefault((s.dataset, s.sampler, s.budget, label), []).append(s)
    rows = [
        {
            "dataset": ds,
            "sampler": sampler,
            "budget": budget,
            "label": label,
            "lesion_slides": len(grp),
            "hits": sum(s.n_kept_lesion > 0 for s in grp),
            "recall": float(np.mean([s.n_kept_lesion > 0 for s in grp])),
            "patch_recall": float(np.mean([s.patch_recall for s in grp])),
        }
        for (ds, sampler, budget, label), grp in groups.items()
    ]
    df = pd.DataFrame(rows, columns=CLASS_RECALL_COLUMNS)
    df["budget"] = df["budget"].astype("Int64")
    return df.sort_values(["dataset", "sampler", "budget", "label"], na_position="first", ignore_index=True)


def morphology_coverage(
    morphology: np.ndarray, indices: np.ndarray, n_names: int, rare_fraction: float = RARE_FRACTION
) -> tuple[float, float, int, int]:
    """(share of the slide's morphologies kept, share of its rare ones kept, how many it has, how many
    are rare). A morphology is the slide's when >= 1 of its patches has it, rare when it covers at most
    `rare_fraction` of the patches; the rare share is NaN on a slide without a rare morphology."""
    morphology = np.asarray(morphology, dtype=np.int64)
    counts = np.bincount(morphology, minlength=n_names)
    kept = np.bincount(morphology[np.asarray(indices, dtype=np.int64)], minlength=n_names) > 0
    present = counts > 0
    rare = present & (counts <= rare_fraction * len(morphology))
    cover = float(kept[present].mean()) if present.any() else math.nan
    rare_cover = float(kept[rare].mean()) if rare.any() else math.nan
    return cover, rare_cover, int(present.sum()), int(rare.sum())


def _rate(hits: int, n: int) -> str:
    return "n/a" if n == 0 else f"{hits / n:.2f} ({hits}/{n})"


def retention_table(
    df: pd.DataFrame, dataset_tasks: Mapping[str, str] | None = None, small: int = SMALL_LESION_PATCHES
) -> Table:
    t = Table(
        [
            "dataset",
            "sampler",
            "budget",
            "lesion kept (slides)",
            f"lesion ≤ {small} patches kept",
            "lesion share of kept patches",
            "lesion share of full bag",
        ],
        [],
        numeric={2, 3, 4, 5, 6},
    )
    for i, r in enumerate(df.itertuples(index=False)):
        if r.sampler == FULL:
            t.ref_rows.add(i)
        task = (dataset_tasks or {}).get(r.dataset)
        b = "" if pd.isna(r.budget) else str(int(r.budget))
        t.rows.append(
            [
                f"{r.dataset} ({task})" if task else r.dataset,
                r.sampler,
                budget_label(r.sampler, b),
                _rate(r.hits, r.lesion_slides),
                _rate(r.small_hits, r.small_slides),
                "n/a" if math.isnan(r.kept_lesion_fraction) else f"{r.kept_lesion_fraction:.3f}",
                "n/a" if math.isnan(r.full_lesion_fraction) else f"{r.full_lesion_fraction:.3f}",
            ]
        )
    return t
