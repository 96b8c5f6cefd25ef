"""What a validated preset holds: the vocabulary of the generator and the frozen specs it reads.

Kept apart from the validation (`preset.py`) so that planning, atlas and slide code depend on these
plain dataclasses only, never on how a YAML mapping was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wsisum.data.ground_truth import BACKGROUND_MORPHOLOGIES

KINDS = ("camelyon", "brca", "bracs", "pam50")
CAMELYON_CLASSES = ("negative", "itc", "micro", "macro")
BRCA_CLASSES = ("IDC", "ILC")
PAM50_CLASSES = ("LumA", "LumB", "Her2", "Basal")  # PAM50-like molecular subtypes (Normal-like left out)
PAM50_TUMOUR = "tumour"  # the one tumour morphology every pam50-kind slide has; the class shifts its mean
BRACS_NAMES = ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC")  # BRACS order, benign -> invasive
FEATURE_DTYPES = ("float16", "float32")
N_PATCHES_DISTS = ("uniform", "loguniform", "logspace")


@dataclass(frozen=True)
class TeacherSpec:
    """One slide encoder to imitate: its embedding dim and typical norm."""

    name: str
    dim: int
    norm: float


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset (one task) of the cohort, as its preset section describes it."""

    name: str
    kind: str
    task: str
    prefix: str
    n_slides: int
    n_patches: tuple[int, int]
    n_patches_dist: str
    background: dict[str, float]
    classes: tuple[str, ...]
    class_fractions: tuple[float, ...]
    lesion: dict[str, Any]  # kind-specific keys of `preset.KIND_KEYS`, validated

    @property
    def lesion_morphologies(self) -> tuple[str, ...]:
        """The morphologies that carry this dataset's label (one per class for the graded kind)."""
        if self.kind == "camelyon":
            return ("metastasis",)
        if self.kind == "brca":
            return ("idc", "ilc")
        if self.kind == "pam50":
            return (PAM50_TUMOUR,)
        return tuple(f"lesion_{c}" for c in self.classes)


@dataclass(frozen=True)
class Preset:
    """A whole validated preset (one `configs/preset/*.yaml`)."""

    name: str
    feature_dim: int
    feature_dtype: str
    latent_dim: int
    patch_size: int
    level0_magnification: float
    target_magnification: float
    n_folds: int
    val_fraction: float
    paired_case_fraction: float
    morphology: dict[str, float]
    features: dict[str, float]
    tissue: dict[str, Any]
    teacher_parts: dict[str, float]  # typical weight of each content part in a teacher
    artifacts: dict[str, Any]
    sites: dict[str, Any]
    teacher_hidden: int
    teacher_noise: float
    teacher_output_noise: float
    teacher_norm_jitter: float
    teachers: tuple[TeacherSpec, ...]
    datasets: tuple[DatasetSpec, ...]

    @property
    def patch_size_level0(self) -> int:
        """Grid stride in level-0 pixels (512 for 256-px patches at 20x on a 40x scan)."""
        return int(round(self.patch_size * self.level0_magnification / self.target_magnification))


def bracs_class_names(n_classes: int) -> tuple[str, ...]:
    """BRACS-like class names: an evenly spaced subset of the 7 BRACS classes, benign -> invasive.

    5 -> N, UDH, FEA, DCIS, IC; 7 -> all of BRACS; more than 7 -> G0..G{K-1}.
    """
    if n_classes > len(BRACS_NAMES):
        return tuple(f"G{k}" for k in range(n_classes))
    picks = np.floor(np.linspace(0, len(BRACS_NAMES) - 1, n_classes) + 0.5).astype(int)
    return tuple(BRACS_NAMES[i] for i in picks)


def artifact_names(preset: Preset) -> tuple[str, ...]:
    """The artifact morphologies of the cohort (none when artifacts are off)."""
    return tuple(preset.artifacts["kinds"]) if preset.artifacts["slide_probability"] > 0 else ()


def lesion_names_of(preset: Preset) -> tuple[str, ...]:
    """Every dataset's lesion morphologies, first-seen order."""
    names: list[str] = []
    for d in preset.datasets:
        names += [m for m in d.lesion_morphologies if m not in names]
    return tuple(names)


def morphology_names(preset: Preset) -> tuple[str, ...]:
    """Background vocabulary, every dataset's lesion morphologies (first-seen order), then the
    artifacts (appended last, so the codes of a cohort without artifacts do not change)."""
    return tuple(BACKGROUND_MORPHOLOGIES) + lesion_names_of(preset) + artifact_names(preset)
