"""The atlas: morphology prototypes, the latent -> feature map and the teachers.

Everything all slides share, drawn from the global seed only, so every slide of a cohort (and of a
resumed run) is mapped to features and embeddings by the same fixed functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wsisum.data.ground_truth import BACKGROUND_MORPHOLOGIES
from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.spec import Preset, TeacherSpec, artifact_names, morphology_names
from wsisum.data.synthetic.worlds import (
    TEACHER_PARTS,
    anchor_lesions,
    artifact_means,
    class_directions,
    common_direction,
    site_effects,
    tighten_lesions,
)


@dataclass
class Teacher:
    """A fixed random 2-layer MLP standing in for one slide encoder."""

    spec: TeacherSpec
    part_weights: list[np.ndarray]  # one (H, p_k) block per content part
    hidden_bias: np.ndarray
    out: np.ndarray  # (D_t, H)
    out_bias: np.ndarray  # (D_t,)


@dataclass
class Atlas:
    """The shared generative model of a cohort (see the module docstring)."""

    names: tuple[str, ...]
    background: tuple[str, ...]
    means: np.ndarray  # (M, L)
    factors: np.ndarray  # (M, L, r) low-rank covariance factors
    diags: np.ndarray  # (M, L) diagonal std
    proj: np.ndarray  # (L, D) linear part
    nl_proj: np.ndarray  # (L, D) inside the tanh
    nl_bias: np.ndarray  # (D,)
    gamma: np.ndarray  # (D,) LayerNorm scale
    beta: np.ndarray  # (D,) LayerNorm shift
    latent_scale: float  # typical latent norm; scales the lesion part of teacher inputs to O(1) entries
    teachers: list[Teacher]
    common: np.ndarray | None = None  # (D,) shared direction added before the LayerNorm (worlds)
    sites: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (offset, scale) per site
    class_dirs: dict[str, np.ndarray] = field(default_factory=dict)  # PAM50-like class -> unit latent
    artifacts: tuple[str, ...] = ()  # artifact morphology names (the last codes)

    def index(self, name: str) -> int:
        return self.names.index(name)


def _content_dims(preset: Preset) -> list[int]:
    """Sizes of the parts of `slide.slide_content`, in its order."""
    return [len(BACKGROUND_MORPHOLOGIES), 1, preset.latent_dim, preset.feature_dim]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _prototype(seed: int, name: str, preset: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, low-rank factor and diagonal of one morphology; seeded by its name, so it does not
    change when datasets are added to a preset."""
    m, L = preset.morphology, preset.latent_dim
    rng = stream_rng(seed, "morphology", name)
    mean = m["separation"] * rng.standard_normal(L)
    factors = m["factor_scale"] * rng.standard_normal((L, m["rank"])) / math.sqrt(max(m["rank"], 1))
    diag = m["diag_scale"] * np.exp(0.25 * rng.standard_normal(L))
    return mean, factors, diag


def _structured_means(seed: int, preset: Preset, names: Sequence[str], means: np.ndarray) -> None:
    """Lesion means with controlled geometry: ILC at `subtype_separation` from IDC; BRACS-like grades
    on a slightly bent path from normal epithelium, `grade_step` apart (smaller than the per-patch
    spread, so a single patch barely tells neighbouring grades apart)."""
    m = preset.morphology
    rng = stream_rng(seed, "morphology", "geometry")
    d_sub, u, w = (_unit(rng.standard_normal(preset.latent_dim)) for _ in range(3))
    w = _unit(w - (w @ u) * u)
    if "ilc" in names:
        means[names.index("ilc")] = means[names.index("idc")] + m["subtype_separation"] * d_sub
    grades = [n for n in names if n.startswith("lesion_")]
    start = means[names.index("normal_epithelium")]
    for k, n in enumerate(grades):
        t = k / max(len(grades) - 1, 1)
        bend = 0.5 * m["grade_step"] * math.sin(math.pi * t)
        means[names.index(n)] = start + (k + 1) * m["grade_step"] * u + bend * w


def _teacher(seed: int, spec: TeacherSpec, part_dims: Sequence[int], hidden: int, parts: Sequence[float]) -> Teacher:
    """A fixed random 2-layer tanh MLP; each teacher weighs the content parts differently (around
    the preset's `teacher_parts`), so teachers differ in what they are good at."""
    rng = stream_rng(seed, "teacher", spec.name)
    gains = np.asarray(parts) * np.exp(0.3 * rng.standard_normal(len(part_dims)))
    blocks = [g * rng.standard_normal((hidden, p)) / math.sqrt(p) for g, p in zip(gains, part_dims)]
    return Teacher(
        spec=spec,
        part_weights=blocks,
        hidden_bias=0.3 * rng.standard_normal(hidden),
        out=rng.standard_normal((spec.dim, hidden)) / math.sqrt(hidden),
        out_bias=0.5 * rng.standard_normal(spec.dim),
    )


def build_atlas(preset: Preset, seed: int) -> Atlas:
    """Everything shared by all slides; depends on (preset, seed) only."""
    names = morphology_names(preset)
    L, D = preset.latent_dim, preset.feature_dim
    protos = [_prototype(seed, n, preset) for n in names]
    means = np.stack([p[0] for p in protos])
    factors, diags = np.stack([p[1] for p in protos]), np.stack([p[2] for p in protos])
    anchor_lesions(seed, preset, names, means)
    _structured_means(seed, preset, names, means)
    artifact_means(seed, preset, names, means)
    tighten_lesions(preset, names, factors, diags)
    rng = stream_rng(seed, "projection")
    proj = rng.standard_normal((L, D)) / math.sqrt(L)
    nl_proj = 1.5 * rng.standard_normal((L, D)) / math.sqrt(L)
    nl_bias = 0.5 * rng.standard_normal(D)
    gamma = 1.0 + 0.1 * rng.standard_normal(D)
    beta = 0.05 * rng.standard_normal(D)
    m = preset.morphology
    latent_scale = math.sqrt(L * (m["separation"] ** 2 + m["diag_scale"] ** 2 + m["factor_scale"] ** 2)) + 1e-6
    part_dims = _content_dims(preset)
    parts = [preset.teacher_parts[k] for k in TEACHER_PARTS]
    teachers = [_teacher(seed, t, part_dims, preset.teacher_hidden, parts) for t in preset.teachers]
    return Atlas(
        names=names,
        background=BACKGROUND_MORPHOLOGIES,
        means=means,
        factors=factors,
        diags=diags,
        proj=proj.astype(np.float32),
        nl_proj=nl_proj.astype(np.float32),
        nl_bias=nl_bias.astype(np.float32),
        gamma=gamma.astype(np.float32),
        beta=beta.astype(np.float32),
        latent_scale=latent_scale,
        teachers=teachers,
        common=common_direction(seed, preset),
        sites=site_effects(seed, preset),
        class_dirs=class_directions(seed, preset),
        artifacts=artifact_names(preset),
    )
