"""Where a synthetic cohort's files live, and the names that mark a directory as ours.

One place for paths, so the writer, the resume check and the manifest agree on what a complete
cohort is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from wsisum.data.layouts import BAG_DIR, EMBEDDINGS_DIR, LABELS_DIR, SPLITS_DIR
from wsisum.data.synthetic.plan import SlidePlan
from wsisum.data.synthetic.spec import Preset

# Written into every bag, embedding, marker and manifest; a resume compares it. It keeps the name of
# the former single module on purpose: changing it would refuse every existing cohort.
GENERATOR = "wsisum.data.synthetic"
GENERATOR_VERSION = 1
# Written first and kept: marks the directory as ours, so a resume can check preset/seed before
# cohort.json exists and `overwrite` never deletes a cohort that some other tool wrote.
MARKER_NAME = ".wsisum-synth.json"
LAYOUT_DIRS = (BAG_DIR, EMBEDDINGS_DIR, LABELS_DIR, SPLITS_DIR)


def bag_path(out_dir: Path, plan: SlidePlan) -> Path:
    return out_dir / BAG_DIR / plan.dataset / f"{plan.slide_id}.h5"


def embedding_path(out_dir: Path, plan: SlidePlan, teacher: str) -> Path:
    return out_dir / EMBEDDINGS_DIR / plan.dataset / teacher / f"{plan.slide_id}.h5"


def labels_path(out_dir: Path, task: str) -> Path:
    return out_dir / LABELS_DIR / f"{task}.csv"


def split_path(out_dir: Path, task: str, fold: int) -> Path:
    return out_dir / SPLITS_DIR / task / f"splits_{fold}.csv"


def expected_files(out_dir: Path, preset: Preset, plans: Mapping[str, list[SlidePlan]]) -> list[Path]:
    """Every file a complete cohort has (cohort.json aside)."""
    files = []
    for spec in preset.datasets:
        for p in plans[spec.name]:
            files.append(bag_path(out_dir, p))
            files += [embedding_path(out_dir, p, t.name) for t in preset.teachers]
        files.append(labels_path(out_dir, spec.task))
        files += [split_path(out_dir, spec.task, k) for k in range(preset.n_folds)]
    return files
