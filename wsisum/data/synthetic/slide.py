"""One slide: case effects, per-patch latents, features and the teachers' slide embeddings.

Each slide is drawn from its own streams (seed, dataset, slide index[, purpose]) and its case's
(seed, dataset, case), so it comes out identical whatever the run order or a resume skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsisum.data.synthetic.artifacts import place_artifacts
from wsisum.data.synthetic.atlas import Atlas, Teacher
from wsisum.data.synthetic.geometry import background_map, place_lesions, tissue_mask
from wsisum.data.synthetic.plan import SlidePlan
from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.spec import PAM50_TUMOUR, DatasetSpec, Preset
from wsisum.data.synthetic.worlds import case_site, spread

_CHUNK = 8192  # patches per feature chunk: bounds memory on 100k-patch slides (fixed: it is in the RNG path)


@dataclass
class CaseEffects:
    """What the slides of one patient share (so case-level splits matter): stain and biology drift."""

    stain: np.ndarray  # (D,) shift before LayerNorm
    drift: np.ndarray  # (M, L) per-morphology mean shift
    lesion: np.ndarray  # (L,) extra shift of lesion means (within-class spread of tumours)


def case_effects(plan: SlidePlan, preset: Preset, atlas: Atlas, seed: int) -> CaseEffects:
    """Drawn from (seed, dataset, case), so both slides of a paired case get the same effects."""
    rng = stream_rng(seed, plan.dataset, "case", plan.case_index)
    m = preset.morphology
    return CaseEffects(
        stain=(preset.features["stain_shift"] * rng.standard_normal(preset.feature_dim)).astype(np.float32),
        drift=m["slide_jitter"] * rng.standard_normal(atlas.means.shape),
        lesion=m["lesion_jitter"] * rng.standard_normal(preset.latent_dim),
    )


def draw_latents(morph: np.ndarray, means: np.ndarray, atlas: Atlas, rng: np.random.Generator) -> np.ndarray:
    """Per-patch latents: Gaussian per morphology with low-rank + diagonal covariance."""
    z = np.empty((len(morph), atlas.means.shape[1]))
    for m in np.unique(morph):
        idx = np.flatnonzero(morph == m)
        e1 = rng.standard_normal((len(idx), atlas.factors.shape[2]))
        e2 = rng.standard_normal((len(idx), atlas.means.shape[1]))
        z[idx] = means[m] + e1 @ atlas.factors[m].T + e2 * atlas.diags[m]
    return z


def latents_to_features(
    z: np.ndarray,
    atlas: Atlas,
    preset: Preset,
    stain: np.ndarray,
    rng: np.random.Generator,
    *,
    site: tuple[np.ndarray, np.ndarray] | None = None,
    tissue: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features in the output dtype, plus their float64 mean over the `tissue` rows (all rows when
    None; for teachers); chunked so a 100k x 768 slide needs one output array, not several
    float32/float64 copies. A `site` (offset, scale) acts after the LayerNorm."""
    f = preset.features
    out = np.empty((len(z), preset.feature_dim), dtype=preset.feature_dtype)
    total = np.zeros(preset.feature_dim)
    for s in range(0, len(z), _CHUNK):
        zc = z[s : s + _CHUNK].astype(np.float32)
        x = zc @ atlas.proj + f["nonlinear_weight"] * np.tanh(zc @ atlas.nl_proj + atlas.nl_bias)
        x += f["noise"] * rng.standard_normal(x.shape, dtype=np.float32) + stain
        if atlas.common is not None:  # real features share a direction: mostly positive cosines
            x += f["common_weight"] * atlas.common
        # LayerNorm-like rows, as the last layer of CONCH-style encoders leaves them
        x -= x.mean(axis=1, keepdims=True)
        x /= np.sqrt(x.var(axis=1, keepdims=True) + 1e-6)
        x = x * atlas.gamma + atlas.beta
        if site is not None:
            x = x * (1.0 + site[1]) + site[0]
        if tissue is None:
            total += x.sum(axis=0, dtype=np.float64)
        else:
            total += x[tissue[s : s + len(x)]].sum(axis=0, dtype=np.float64)
        out[s : s + len(x)] = x
    return out, total / (len(z) if tissue is None else max(int(tissue.sum()), 1))


def slide_content(
    morph: np.ndarray,
    lesion_mask: np.ndarray,
    z: np.ndarray,
    mean_feature: np.ndarray,
    atlas: Atlas,
    tissue: np.ndarray | None = None,
) -> list[np.ndarray]:
    """What teachers see, in parts with entries of order 1: sqrt background composition, log lesion
    fraction, lesion mean latent (scaled by sqrt(frac): small lesions still move it a little), mean
    feature. Lesion morphologies are pooled into one fraction so the class is not a free one-hot.
    Only the `tissue` patches count (artifacts are invisible to teachers; all patches when None)."""
    if tissue is not None:
        morph, lesion_mask, z = morph[tissue], lesion_mask[tissue], z[tissue]
    n_bg = len(atlas.background)
    counts = np.bincount(morph[~lesion_mask], minlength=len(atlas.names))[:n_bg]
    frac = float(lesion_mask.mean())
    lesion_part = np.zeros(z.shape[1])
    if lesion_mask.any():
        per_dim = atlas.latent_scale / math.sqrt(z.shape[1])
        lesion_part = z[lesion_mask].mean(axis=0) / per_dim * math.sqrt(frac)
    return [
        np.sqrt(counts / len(morph) * n_bg),
        np.array([math.log1p(frac / 1e-2) / math.log1p(1e2)]),
        lesion_part,
        mean_feature,
    ]


def teacher_embedding(
    teacher: Teacher, content: Sequence[np.ndarray], preset: Preset, rng: np.random.Generator
) -> np.ndarray:
    """Fixed MLP of the content, rescaled to the teacher's norm. Noise enters the hidden layer (a
    teacher's errors are semantic, shared by all its dims, so a probe cannot average them away) and,
    a little, the output."""
    pre = teacher.hidden_bias + sum(wk @ ck for wk, ck in zip(teacher.part_weights, content))
    pre = pre + preset.teacher_noise * rng.standard_normal(len(pre))
    signal = teacher.out @ np.tanh(pre)
    rms = float(np.sqrt(np.mean(signal**2)))
    e = signal + teacher.out_bias + preset.teacher_output_noise * rms * rng.standard_normal(len(signal))
    target = teacher.spec.norm * (1.0 + preset.teacher_norm_jitter * rng.standard_normal())
    return (e * target / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)


@dataclass
class Slide:
    """One drawn slide, ready to write: its bag arrays and one embedding per teacher."""

    plan: SlidePlan
    features: np.ndarray
    coords: np.ndarray
    morphology: np.ndarray
    n_lesion: int
    embeddings: dict[str, np.ndarray]
    n_artifact: int = 0


def _slide_means(plan: SlidePlan, spec: DatasetSpec, atlas: Atlas, case: CaseEffects) -> np.ndarray:
    """Morphology means of one slide: the atlas plus its case's drift and lesion shift, plus the
    PAM50-like class shift of the tumour (a subtle, diffuse displacement, not a separate cluster)."""
    means = atlas.means + case.drift
    for name in spec.lesion_morphologies:  # per-case lesion shift: the within-class spread of tumours
        means[atlas.index(name)] += case.lesion
    if spec.kind == "pam50":
        t = atlas.index(PAM50_TUMOUR)
        size = spec.lesion["subtype_shift"] * spread(atlas.factors[t], atlas.diags[t])
        means[t] += size * atlas.class_dirs[plan.label]
    return means


def _add_artifacts(
    plan: SlidePlan, grid_index, lesion_mask, z, morph, means, preset: Preset, atlas: Atlas, seed: int
) -> np.ndarray | None:
    """Artifact pieces over non-lesion tissue (own stream); returns the tissue mask, None without."""
    if not atlas.artifacts:
        return None
    rng = stream_rng(seed, plan.dataset, plan.index, "artifacts")
    pieces = place_artifacts(grid_index, lesion_mask, preset, atlas, rng)
    tissue = np.ones(len(morph), dtype=bool)
    for cells, code in pieces:
        z[cells] = draw_latents(np.full(len(cells), code), means, atlas, rng)
        morph[cells] = code
        tissue[cells] = False
    return tissue


def build_slide(plan: SlidePlan, spec: DatasetSpec, preset: Preset, atlas: Atlas, seed: int) -> Slide:
    """Draw one slide from its own seed (seed, dataset, index): identical whatever the run order."""
    rng = stream_rng(seed, plan.dataset, plan.index)
    mask = tissue_mask(plan.n_patches, preset.tissue, rng)
    grid_index = np.full(mask.shape, -1, dtype=np.int64)
    grid_index[mask] = np.arange(plan.n_patches)
    rows, cols = np.nonzero(mask)  # row-major, matching grid_index order
    coords = np.stack([cols, rows], axis=1).astype(np.int64) * preset.patch_size_level0  # (x, y)
    bg = background_map(mask, spec.background, atlas, preset.tissue, rng)
    lesions = place_lesions(plan, spec, grid_index, atlas, preset.tissue, rng)
    case = case_effects(plan, preset, atlas, seed)
    means = _slide_means(plan, spec, atlas, case)
    z = draw_latents(bg, means, atlas, rng)
    morph = bg.copy()
    for les in lesions:
        tumour = draw_latents(np.full(len(les.cells), les.morphology), means, atlas, rng)
        if les.purity is not None:  # ITC: a few tumour cells inside otherwise normal node tissue
            a = les.purity[:, None]
            tumour = a * tumour + (1 - a) * z[les.cells]
        z[les.cells] = tumour
        morph[les.cells] = les.morphology
    lesion_mask = np.zeros(plan.n_patches, dtype=bool)
    for les in lesions:
        lesion_mask[les.cells] = True
    tissue = _add_artifacts(plan, grid_index, lesion_mask, z, morph, means, preset, atlas, seed)
    site = case_site(seed, preset, plan.dataset, plan.case_index)
    features, mean_feature = latents_to_features(
        z,
        atlas,
        preset,
        case.stain,
        stream_rng(seed, plan.dataset, plan.index, "noise"),
        site=None if site is None else atlas.sites[site],
        tissue=tissue,
    )
    content = slide_content(morph, lesion_mask, z, mean_feature, atlas, tissue)
    embeddings = {
        t.spec.name: teacher_embedding(
            t, content, preset, stream_rng(seed, plan.dataset, plan.index, "teacher", t.spec.name)
        )
        for t in atlas.teachers
    }
    n_art = 0 if tissue is None else int((~tissue).sum())
    return Slide(plan, features, coords, morph.astype(np.int16), int(lesion_mask.sum()), embeddings, n_art)
