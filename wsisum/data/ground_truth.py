"""Per-patch ground truth that a cohort may carry, and the names both its writer and its readers use.

Synthetic cohorts (`wsisum-synth`) have it; the report's lesion checks read it. Neither side imports
the other: both use these names.

    ROOT/cohort.json                    the manifest, written last: ids, tasks, classes, `morphologies`
                                        (code -> name), `lesion_morphologies` (per task), counts
    bag dataset `morphology` (N,)       the morphology code of each patch
    bag attr `morphology_names`         JSON list, code -> name (overrides the manifest's list)

A bag without a manifest still says which codes are lesions: every name that is not one of the
`BACKGROUND_MORPHOLOGIES` (the tissue every synthetic slide is made of) nor of the
`ARTIFACT_MORPHOLOGIES` (pen, folds, blur, bubbles, tissue edges: isolated within a slide, common
across a cohort, never diagnostic; a summary should hold no more of them than the slide does).
"""

from __future__ import annotations

MANIFEST_NAME = "cohort.json"
MORPHOLOGY_DATASET = "morphology"
MORPHOLOGY_NAMES_ATTR = "morphology_names"
MANIFEST_MORPHOLOGIES = "morphologies"
MANIFEST_LESIONS = "lesion_morphologies"

BACKGROUND_MORPHOLOGIES = (
    "stroma",
    "adipose",
    "normal_epithelium",
    "lymphocytes",
    "necrosis",
    "blood",
    "background",
    "lymph_node",
)

ARTIFACT_MORPHOLOGIES = ("pen", "fold", "blur", "bubble", "edge")
