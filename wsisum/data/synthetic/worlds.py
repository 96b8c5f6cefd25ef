"""What makes a "world" unlike the demo: artifacts, site shifts, real feature geometry, tumours
anchored near normal tissue, PAM50-like subtypes and teachers that weigh diagnostic content most.

Every switch here is a preset key that is off in `configs/preset/base/common.yaml`, and every draw
comes from a stream of its own (`seeds.stream_rng` with a new purpose name), so a preset that leaves
them off writes the same cohort, bit for bit, as before they existed. This module holds the preset
sections' validation and the atlas parts they add; `artifacts` places artifacts on a slide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from wsisum.data.ground_truth import ARTIFACT_MORPHOLOGIES, BACKGROUND_MORPHOLOGIES
from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.spec import PAM50_CLASSES, PAM50_TUMOUR, Preset, artifact_names, lesion_names_of

# The content parts of `slide.slide_content`, in its order; `teacher_parts` weighs them
TEACHER_PARTS = ("composition", "lesion_fraction", "lesion", "mean_feature")
# Lesion morphologies that `morphology.anchor_distance` places near normal epithelium (ILC follows
# IDC at `subtype_separation`; BRACS-like grades already start from normal epithelium)
ANCHORED = ("idc", PAM50_TUMOUR, "metastasis")
ANCHOR_TISSUE = "normal_epithelium"


def parse_teacher_parts(sec: Any) -> dict[str, float]:
    """`teacher_parts`: the typical weight of each content part (every teacher jitters them)."""
    return {k: sec.number(k, 0.0) for k in TEACHER_PARTS}


def parse_artifacts(sec: Any) -> dict[str, Any]:
    """`artifacts`: how often slides have them, which kinds, how many pieces and how much tissue."""
    kinds = sec.get("kinds")
    if isinstance(kinds, str) or not isinstance(kinds, Sequence) or not kinds:
        raise sec.error("kinds", f"expected a non-empty list of {list(ARTIFACT_MORPHOLOGIES)}")
    bad = [k for k in kinds if k not in ARTIFACT_MORPHOLOGIES]
    if bad or len(set(kinds)) != len(kinds):
        raise sec.error("kinds", f"{list(kinds)}: each once, from {list(ARTIFACT_MORPHOLOGIES)}")
    return {
        "slide_probability": sec.number("slide_probability", 0.0, 1.0),
        "kinds": tuple(str(k) for k in kinds),
        "pieces": sec.pair("pieces", 1, 10, integer=True),
        "fraction": sec.pair("fraction", 0.0, 0.5),
        "isolation": sec.number("isolation", 0.0),
    }


def parse_sites(sec: Any) -> dict[str, Any]:
    """`sites`: how many acquisition sites, and the std of their feature offset and scale."""
    return {
        "n_sites": sec.number("n_sites", 0, integer=True),
        "offset": sec.number("offset", 0.0),
        "scale": sec.number("scale", 0.0, 0.5),
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def anchor_lesions(seed: int, preset: Preset, names: Sequence[str], means: np.ndarray) -> None:
    """Tumour-like lesion means at `anchor_distance` from normal epithelium (off at 0): a large
    tumour region is then a coherent region near a normal tissue, not an outlier."""
    dist = preset.morphology["anchor_distance"]
    if dist <= 0:
        return
    start = means[names.index(ANCHOR_TISSUE)]
    for n in ANCHORED:
        if n in names:
            means[names.index(n)] = start + dist * _unit(stream_rng(seed, "anchor", n).standard_normal(len(start)))


def tighten_lesions(preset: Preset, names: Sequence[str], factors: np.ndarray, diags: np.ndarray) -> None:
    """Lesion morphologies' spread times `lesion_tightness` (real tumour regions are tighter)."""
    t = preset.morphology["lesion_tightness"]
    if t == 1.0:
        return
    for n in lesion_names_of(preset):
        factors[names.index(n)] *= t
        diags[names.index(n)] *= t


def artifact_means(seed: int, preset: Preset, names: Sequence[str], means: np.ndarray) -> None:
    """Each artifact kind's mean, `isolation` times the tissue means' typical norm from their
    centroid in a random direction: far from every tissue, the same in every slide of the cohort."""
    m, L = preset.morphology, preset.latent_dim
    centre = means[: len(BACKGROUND_MORPHOLOGIES)].mean(axis=0)
    radius = preset.artifacts["isolation"] * m["separation"] * math.sqrt(L)
    for n in artifact_names(preset):
        means[names.index(n)] = centre + radius * _unit(stream_rng(seed, "artifact", n).standard_normal(L))


def common_direction(seed: int, preset: Preset) -> np.ndarray | None:
    """The shared feature direction (unit per-dim scale) added before the LayerNorm; None when off."""
    if preset.features["common_weight"] <= 0:
        return None
    return stream_rng(seed, "common_direction").standard_normal(preset.feature_dim).astype(np.float32)


def site_effects(seed: int, preset: Preset) -> list[tuple[np.ndarray, np.ndarray]]:
    """(offset, scale) per site: features become x * (1 + scale) + offset after the LayerNorm."""
    s, D = preset.sites, preset.feature_dim
    out = []
    for k in range(s["n_sites"]):
        rng = stream_rng(seed, "site", k)
        offset = s["offset"] * rng.standard_normal(D)
        scale = s["scale"] * rng.standard_normal(D)
        out.append((offset.astype(np.float32), scale.astype(np.float32)))
    return out


def case_site(seed: int, preset: Preset, dataset: str, case_index: int) -> int | None:
    """The site a case was scanned at (independent of its label); None without sites."""
    n = preset.sites["n_sites"]
    if n == 0:
        return None
    return int(stream_rng(seed, dataset, "case", case_index, "site").integers(n))


def class_directions(seed: int, preset: Preset) -> dict[str, np.ndarray]:
    """A fixed random unit latent direction per PAM50-like class (empty without a pam50 dataset)."""
    if not any(d.kind == "pam50" for d in preset.datasets):
        return {}
    return {c: _unit(stream_rng(seed, "pam50", c).standard_normal(preset.latent_dim)) for c in PAM50_CLASSES}


def spread(factors: np.ndarray, diags: np.ndarray) -> float:
    """Per-patch spread of one morphology: the root of its covariance's trace."""
    return float(math.sqrt(np.sum(diags**2) + np.sum(factors**2)))
