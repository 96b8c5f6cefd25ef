"""Writing a cohort's files: one slide's bag and teacher embeddings, and each task's labels and splits.

Every file is written atomically and skipped when present, so an interrupted run resumes where it
stopped without rewriting (or half-writing) anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.data.bags import write_bag
from wsisum.data.embeddings import write_embedding
from wsisum.data.ground_truth import MORPHOLOGY_DATASET, MORPHOLOGY_NAMES_ATTR
from wsisum.data.synthetic.atlas import Atlas
from wsisum.data.synthetic.layout import (
    GENERATOR,
    GENERATOR_VERSION,
    bag_path,
    embedding_path,
    labels_path,
    split_path,
)
from wsisum.data.synthetic.plan import SlidePlan, make_splits
from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.slide import Slide
from wsisum.data.synthetic.spec import DatasetSpec, Preset


def write_slide(out_dir: Path, slide: Slide, spec: DatasetSpec, preset: Preset, atlas: Atlas, seed: int) -> None:
    """Write the bag and teacher files that are missing (each atomically)."""
    plan = slide.plan
    bp = bag_path(out_dir, plan)
    if not bp.exists():
        attrs = {
            "slide_id": plan.slide_id,
            "case_id": plan.case_id,
            "dataset": plan.dataset,
            "task": spec.task,
            "label": plan.label,
            "label_index": plan.label_index,
            "n_lesion_patches": slide.n_lesion,
            "lesion_fraction": slide.n_lesion / plan.n_patches,
            MORPHOLOGY_NAMES_ATTR: json.dumps(list(atlas.names)),
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "preset": preset.name,
            "seed": seed,
        }
        if atlas.artifacts:  # worlds with artifacts; cohorts without keep their former attrs
            attrs["n_artifact_patches"] = slide.n_artifact
        coords_attrs = {
            "patch_size": preset.patch_size,
            "patch_size_level0": preset.patch_size_level0,
            "patch_level": 0,
            "level0_magnification": preset.level0_magnification,
            "target_magnification": preset.target_magnification,
            "overlap": 0,
        }
        write_bag(
            bp,
            slide.features,
            slide.coords,
            attrs=attrs,
            coords_attrs=coords_attrs,
            extras={MORPHOLOGY_DATASET: slide.morphology},
        )
    for name, emb in slide.embeddings.items():
        ep = embedding_path(out_dir, plan, name)
        if not ep.exists():
            write_embedding(ep, emb, attrs={"slide_id": plan.slide_id, "teacher": name, "generator": GENERATOR})


def _write_csv(path: Path, df: pd.DataFrame, *, index: bool) -> None:
    """Atomic, and skipped when present (a resumed run keeps what it wrote)."""
    if path.exists():
        return
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def write_labels_and_splits(
    out_dir: Path, spec: DatasetSpec, plans: list[SlidePlan], preset: Preset, seed: int
) -> None:
    """labels/<task>.csv and splits/<task>/splits_k.csv; the splits stream is (seed, task, "splits")."""
    labels = pd.DataFrame(
        {
            "slide_id": [p.slide_id for p in plans],
            "label": [p.label for p in plans],
            "case_id": [p.case_id for p in plans],
        }
    )
    _write_csv(labels_path(out_dir, spec.task), labels, index=False)
    folds = make_splits(plans, preset.n_folds, preset.val_fraction, stream_rng(seed, spec.task, "splits"))
    for k, parts in enumerate(folds):
        # Columns of different lengths: concat pads with NaN, written as empty cells (CLAM layout)
        df = pd.concat([pd.Series(parts[c], name=c, dtype=object) for c in ("train", "val", "test")], axis=1)
        _write_csv(split_path(out_dir, spec.task, k), df, index=True)
