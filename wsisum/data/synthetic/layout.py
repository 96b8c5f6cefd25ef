"""Where a synthetic cohort's files live, and the names that mark a directory as ours.

One place for paths, so the writer, the resume check and the manifest agree on what a complete
cohort is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from wsisum.data.synthetic.plan import SlidePlan
from wsisum.data.synthetic.spec import Preset

# Written into every bag, embedding, marker and manifest; a resume compares it. It keeps the name of
# the former single module on purpose: changing it would refuse every existing cohort.
GENERATOR = "wsisum.data.synthetic"
GENERATOR_VERSION = 1
MANIFEST_NAME = "cohort.json"
# Written first and kept: marks the directory as ours, so a resume can check preset/seed before
# cohort.json exists and `overwrite` never deletes a cohort that some other tool wrote.
MARKER_NAME = ".wsisum-synth.json"
LAYOUT_DIRS = ("h5_files", "slide_embeddings", "labels", "splits")


def bag_path(out_dir: Path, plan: SlidePlan) -> Path:
    return out_dir / "h5_files" / plan.dataset / f"{plan.slide_id}.h5"


def embedding_path(out_dir: Path, plan: SlidePlan, teacher: str) -> Path:
    return out_dir / "slide_embeddings" / plan.dataset / teacher / f"{plan.slide_id}.h5"


def expected_files(out_dir: Path, preset: Preset, plans: Mapping[str, list[SlidePlan]]) -> list[Path]:
    """Every file a complete cohort has (cohort.json aside)."""
    files = []
    for spec in preset.datasets:
        for p in plans[spec.name]:
            files.append(bag_path(out_dir, p))
            files += [embedding_path(out_dir, p, t.name) for t in preset.teachers]
        files.append(out_dir / "labels" / f"{spec.task}.csv")
        files += [out_dir / "splits" / spec.task / f"splits_{k}.csv" for k in range(preset.n_folds)]
    return files
