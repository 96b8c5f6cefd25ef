"""Synthetic cohorts in the contract layout, realistic enough that summarization is a real problem.

Why synthetic: real patch features and slide embeddings are large, licensed and not redistributable;
tests, demos and scale benchmarks need a cohort anyone can regenerate bit for bit from a seed.

What makes it realistic (and summarization non-trivial):
- tissue is a spatially coherent blob (or 1-3 pieces) on a patch grid, coords are level-0 pixels;
- background morphologies form coherent regions (argmax of smoothed random fields);
- the label lives in a lesion that can be tiny (CAMELYON-like ITC: 1-5 patches of thousands),
  moderately different (BRCA-like IDC/ILC) or graded and subtle (BRACS-like);
- each morphology is a Gaussian in a latent space mapped to features by one fixed nonlinear map,
  plus per-case effects (stain shift, morphology drift) and LayerNorm-like rows, as CONCH features;
- slide-level "teacher" embeddings (TITAN/CHIEF/PRISM/GIGAPATH dims and norms) are different fixed
  random functions of the slide content plus noise: informative about the label, never perfect.

Worlds (`preset=worlds`, docs/worlds.md; all off in base/common.yaml, so other presets are
unchanged): artifacts (pen, fold, blur, bubble, edge: isolated, non-diagnostic, invisible to
teachers), site shifts, real feature geometry (a shared direction, tighter tumours; calibrated against
real CONCH/UNI bags with `scripts/feature_geometry.py`), tumours anchored near normal epithelium, a
PAM50-like kind (the class is a diffuse shift of one tumour) and teachers weighing lesion content most.

Every random draw is seeded: the atlas (prototypes, projections, teachers) from `seed`, cohort
plans from (seed, dataset), case effects from (seed, dataset, case), each slide from
(seed, dataset, slide index). So a resumed or reordered run writes identical arrays.

Modules, in dependency order: `spec` (vocabulary and frozen specs), `seeds` (named random streams),
`plan` (labels, cases, sizes, splits), `worlds` (the world switches: their preset sections and atlas
parts), `preset` (validation), `atlas` (shared generative model), `geometry` (tissue, regions,
lesions), `artifacts` (artifact pieces on the grid), `slide` (latents, features, embeddings),
`layout` (paths and marker names), `writer` (bags, embeddings, CSVs), `manifest` (cohort.json and
the resume decision), `cohort` (`generate_cohort`), `calibration` (feature geometry of a bag). This
package re-exports what callers used from the former module.
"""

from __future__ import annotations

from wsisum.data.ground_truth import BACKGROUND_MORPHOLOGIES, MANIFEST_NAME
from wsisum.data.synthetic.atlas import Atlas, Teacher, build_atlas
from wsisum.data.synthetic.cohort import generate_cohort
from wsisum.data.synthetic.geometry import (
    Lesion,
    background_map,
    camelyon_lesion_size,
    grow_region,
    place_lesions,
    tissue_mask,
)
from wsisum.data.synthetic.layout import (
    GENERATOR,
    GENERATOR_VERSION,
    LAYOUT_DIRS,
    MARKER_NAME,
    bag_path,
    embedding_path,
    expected_files,
)
from wsisum.data.synthetic.manifest import build_manifest
from wsisum.data.synthetic.plan import SlidePlan, make_splits, plan_dataset
from wsisum.data.synthetic.preset import parse_preset
from wsisum.data.synthetic.slide import (
    CaseEffects,
    Slide,
    build_slide,
    case_effects,
    draw_latents,
    latents_to_features,
    slide_content,
    teacher_embedding,
)
from wsisum.data.synthetic.spec import (
    BRACS_NAMES,
    BRCA_CLASSES,
    CAMELYON_CLASSES,
    FEATURE_DTYPES,
    KINDS,
    N_PATCHES_DISTS,
    DatasetSpec,
    Preset,
    TeacherSpec,
    bracs_class_names,
    morphology_names,
)
from wsisum.data.synthetic.writer import write_labels_and_splits
from wsisum.seeding import stable_hash

__all__ = [
    "BACKGROUND_MORPHOLOGIES",
    "BRACS_NAMES",
    "BRCA_CLASSES",
    "CAMELYON_CLASSES",
    "FEATURE_DTYPES",
    "GENERATOR",
    "GENERATOR_VERSION",
    "KINDS",
    "LAYOUT_DIRS",
    "MANIFEST_NAME",
    "MARKER_NAME",
    "N_PATCHES_DISTS",
    "Atlas",
    "CaseEffects",
    "DatasetSpec",
    "Lesion",
    "Preset",
    "Slide",
    "SlidePlan",
    "Teacher",
    "TeacherSpec",
    "background_map",
    "bag_path",
    "bracs_class_names",
    "build_atlas",
    "build_manifest",
    "build_slide",
    "camelyon_lesion_size",
    "case_effects",
    "draw_latents",
    "embedding_path",
    "expected_files",
    "generate_cohort",
    "grow_region",
    "latents_to_features",
    "make_splits",
    "morphology_names",
    "parse_preset",
    "place_lesions",
    "plan_dataset",
    "slide_content",
    "stable_hash",
    "teacher_embedding",
    "tissue_mask",
    "write_labels_and_splits",
]
