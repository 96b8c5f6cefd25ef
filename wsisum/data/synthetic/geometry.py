"""Slide geometry: the tissue grid, coherent background regions and the label-carrying lesions.

Spatial structure is what makes summarization hard: a lesion is one contiguous region that can be a
handful of patches among thousands, and background morphologies form regions rather than noise.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from wsisum.data.synthetic.atlas import Atlas
from wsisum.data.synthetic.plan import SlidePlan, largest_remainder
from wsisum.data.synthetic.spec import DatasetSpec

_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structure for ndimage.label


def _standardized_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smoothed white noise with zero mean and unit std (smoothing shrinks the std with sigma)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return (f - f.mean()) / max(float(f.std()), 1e-12)


def tissue_mask(n: int, tissue: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A (H, W) grid with exactly `n` tissue cells: 1-3 radial blobs roughened by smooth noise whose
    scale follows the blob radius, so small and 100k-patch slides look alike (no swiss cheese)."""
    area = n / tissue["fill_fraction"]
    lo, hi = tissue["pieces"]
    k = int(rng.integers(lo, hi + 1))
    aspect = k * rng.uniform(1.0, 1.5)  # pieces sit side by side along the long axis
    h = int(math.ceil(math.sqrt(area / aspect))) + 2
    w = int(math.ceil(math.sqrt(area * aspect))) + 2
    yy, xx = np.mgrid[0:h, 0:w]
    shares = rng.dirichlet(np.full(k, 4.0))
    falloff = np.full((h, w), -np.inf)
    for j in range(k):
        cx = (j + 0.5 + rng.uniform(-0.15, 0.15)) * w / k
        cy = h / 2 + rng.uniform(-0.1, 0.1) * h
        radius = math.sqrt(shares[j] * n / math.pi) + 1.0
        stretch = rng.uniform(0.7, 1.4)
        dist = np.hypot((xx - cx) / stretch, (yy - cy) * stretch)
        falloff = np.maximum(falloff, 1.0 - dist / radius)
    sigma = max(1.0, tissue["roughness_scale"] * math.sqrt(n / k / math.pi))
    field = falloff + tissue["roughness"] * _standardized_field((h, w), sigma, rng)
    top = np.argpartition(-field.ravel(), n - 1)[:n]
    mask = np.zeros(h * w, dtype=bool)
    mask[top] = True
    return mask.reshape(h, w)


def background_map(
    mask: np.ndarray, weights: Mapping[str, float], atlas: Atlas, tissue: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """Global morphology index of each tissue cell (row-major): argmax of per-morphology smooth
    fields plus log per-slide weights, so regions are coherent and the mix varies per slide."""
    names = list(weights)
    base = np.array([weights[n] for n in names], dtype=float)
    present = base > 0
    alpha = tissue["composition_concentration"] * base[present] / base[present].sum()
    w = np.zeros(len(names))
    w[present] = rng.dirichlet(alpha)
    sigma = rng.uniform(*tissue["region_sigma"])
    scores = np.stack([_standardized_field(mask.shape, sigma, rng)[mask] for _ in names])
    scores += np.log(w + 1e-12)[:, None]
    ids = np.array([atlas.index(n) for n in names])
    return ids[np.argmax(scores, axis=0)]


def grow_region(available: np.ndarray, k: int, irregularity: float, rng: np.random.Generator) -> np.ndarray:
    """`k` 8-connected cells of `available` (H, W) grown from a random seed cell: best-first on
    distance + smooth noise, so the result is one contiguous lesion with an irregular border.

    Hand-written because scipy/skimage have no priority flood fill with a size stop.
    Returns flat grid indices (fewer than `k` only if no component is that large).
    """
    h, w = available.shape
    labels, n_comp = ndimage.label(available, structure=_EIGHT)
    if n_comp == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(labels.ravel())[1:]
    k = min(k, int(sizes.max()))
    eligible = np.flatnonzero(np.isin(labels.ravel(), np.flatnonzero(sizes >= k) + 1))
    start = int(eligible[rng.integers(len(eligible))])
    sr, sc = divmod(start, w)
    radius = math.sqrt(k / math.pi)
    noise = _standardized_field((h, w), max(1.0, radius / 2), rng)
    yy, xx = np.mgrid[0:h, 0:w]
    prio = (np.hypot(yy - sr, xx - sc) + irregularity * max(radius, 1.0) * noise).ravel()
    avail = available.ravel()
    seen = np.zeros(h * w, dtype=bool)
    seen[start] = True
    heap = [(prio[start], start)]
    out: list[int] = []
    while heap and len(out) < k:
        _, cell = heapq.heappop(heap)
        out.append(cell)
        r, c = divmod(cell, w)
        for dr, dc in _NEIGHBOURS_8:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w:
                nb = rr * w + cc
                if avail[nb] and not seen[nb]:
                    seen[nb] = True
                    heapq.heappush(heap, (prio[nb], nb))
    return np.asarray(out, dtype=np.int64)


@dataclass
class Lesion:
    """One label-carrying region of a slide."""

    cells: np.ndarray  # patch indices
    morphology: int  # global morphology index
    purity: np.ndarray | None = None  # per-cell tumour share (ITC), None = pure


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform, so lesion shares spread evenly over orders of magnitude."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def camelyon_lesion_size(label: str, n: int, p: Mapping[str, Any], rng: np.random.Generator) -> int:
    """Lesion patches by class: 0, ITC 1-5, micro small (>= micro_min), macro large (>= macro_min)."""
    if label == "negative":
        return 0
    if label == "itc":
        return int(rng.integers(p["itc_patches"][0], p["itc_patches"][1] + 1))
    key = "micro" if label == "micro" else "macro"
    k = max(p[f"{key}_min_patches"], int(round(_loguniform(rng, *p[f"{key}_fraction"]) * n)))
    return min(k, n - 1)


def _regions(
    grid_index: np.ndarray, taken: np.ndarray, total: int, n_regions: int, irregularity: float, rng
) -> list[np.ndarray]:
    """`total` cells split over `n_regions` contiguous regions on free tissue; marks them taken."""
    sizes = largest_remainder(rng.dirichlet(np.full(n_regions, 2.0)), total)
    out = []
    for k in sizes[sizes > 0]:
        cells = grow_region((grid_index >= 0) & ~taken, int(k), irregularity, rng)
        taken.ravel()[cells] = True
        out.append(grid_index.ravel()[cells])
    return out


def place_lesions(
    plan: SlidePlan, spec: DatasetSpec, grid_index: np.ndarray, atlas: Atlas, tissue: Mapping[str, Any], rng
) -> list[Lesion]:
    """The label-carrying regions of one slide (none for a negative camelyon slide)."""
    n, p, irr = plan.n_patches, spec.lesion, tissue["lesion_irregularity"]
    taken = np.zeros(grid_index.shape, dtype=bool)
    if spec.kind == "camelyon":
        k = camelyon_lesion_size(plan.label, n, p, rng)
        if k == 0:
            return []
        cells = grid_index.ravel()[grow_region(grid_index >= 0, k, irr, rng)]
        purity = rng.uniform(*p["itc_purity"], size=len(cells)) if plan.label == "itc" else None
        return [Lesion(cells, atlas.index("metastasis"), purity)]
    if spec.kind == "brca":
        main, other = ("idc", "ilc") if plan.label == "IDC" else ("ilc", "idc")
        total = max(1, int(round(rng.uniform(*p["tumour_fraction"]) * n)))
        n_reg = int(rng.integers(p["tumour_regions"][0], p["tumour_regions"][1] + 1))
        out = [Lesion(c, atlas.index(main)) for c in _regions(grid_index, taken, total, n_reg, irr, rng)]
        if rng.random() < p["mixed_probability"]:
            k = max(1, int(round(rng.uniform(*p["mixed_fraction"]) * n)))
            out += [Lesion(c, atlas.index(other)) for c in _regions(grid_index, taken, k, 1, irr, rng)]
        return out
    if spec.kind == "pam50":  # one shared tumour morphology; the class lives in its mean (slide.py)
        total = max(1, int(round(rng.uniform(*p["tumour_fraction"]) * n)))
        n_reg = int(rng.integers(p["tumour_regions"][0], p["tumour_regions"][1] + 1))
        m = atlas.index(spec.lesion_morphologies[0])
        return [Lesion(c, m) for c in _regions(grid_index, taken, total, n_reg, irr, rng)]
    total = max(1, int(round(rng.uniform(*p["lesion_fraction"]) * n)))
    n_reg = int(rng.integers(p["lesion_regions"][0], p["lesion_regions"][1] + 1))
    m = atlas.index(f"lesion_{plan.label}")
    return [Lesion(c, m) for c in _regions(grid_index, taken, total, n_reg, irr, rng)]
