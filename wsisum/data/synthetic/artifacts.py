"""Artifacts on a slide's tissue grid: pen strokes, folds, blur, air bubbles and tissue edges.

Each piece is a spatial pattern of patches of one artifact kind (a morphology of its own, see
`worlds.artifact_means`): pen a short, 2-3 patch wide stroke; fold a thin line; blur an irregular
blob; bubble a small round blob; edge a stretch of the tissue border. Lesion patches are never
covered, so a slide keeps its label's evidence. Drawn from the slide's own "artifacts" stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from wsisum.data.synthetic.atlas import Atlas
from wsisum.data.synthetic.geometry import grow_region
from wsisum.data.synthetic.plan import largest_remainder
from wsisum.data.synthetic.spec import Preset

_Shape = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def _start(free: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    cells = np.flatnonzero(free)
    return divmod(int(cells[rng.integers(len(cells))]), free.shape[1])


def _nearest(candidates: np.ndarray, key: np.ndarray, k: int) -> np.ndarray:
    """The `k` flat candidate cells with the smallest key (stable order)."""
    idx = np.flatnonzero(candidates.ravel())
    return idx[np.argsort(key.ravel()[idx], kind="stable")[:k]]


def _line(half_width: float) -> _Shape:
    """A straight stroke of free cells through a random cell, `half_width` cells either side."""

    def shape(free: np.ndarray, tissue: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        r0, c0 = _start(free, rng)
        theta = rng.uniform(0.0, math.pi)
        yy, xx = np.mgrid[0 : free.shape[0], 0 : free.shape[1]]
        along = (xx - c0) * math.cos(theta) + (yy - r0) * math.sin(theta)
        across = -(xx - c0) * math.sin(theta) + (yy - r0) * math.cos(theta)
        return _nearest(free & (np.abs(across) <= half_width), np.abs(along), k)

    return shape


def _disc(free: np.ndarray, tissue: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A round blob: the `k` free cells nearest a random centre."""
    r0, c0 = _start(free, rng)
    yy, xx = np.mgrid[0 : free.shape[0], 0 : free.shape[1]]
    return _nearest(free, np.hypot(yy - r0, xx - c0), k)


def _blob(free: np.ndarray, tissue: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob (blur), grown like a lesion."""
    return grow_region(free, k, 0.6, rng)


def _edge(free: np.ndarray, tissue: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A stretch of the tissue border: free border cells nearest a random border cell."""
    border = free & tissue & ~ndimage.binary_erosion(tissue, border_value=0)
    if not border.any():
        return _blob(free, tissue, k, rng)
    r0, c0 = _start(border, rng)
    yy, xx = np.mgrid[0 : free.shape[0], 0 : free.shape[1]]
    return _nearest(border, np.hypot(yy - r0, xx - c0), k)


SHAPES: dict[str, _Shape] = {"pen": _line(1.0), "fold": _line(0.5), "blur": _blob, "bubble": _disc, "edge": _edge}


def place_artifacts(
    grid_index: np.ndarray, lesion_mask: np.ndarray, preset: Preset, atlas: Atlas, rng: np.random.Generator
) -> list[tuple[np.ndarray, int]]:
    """(patch indices, morphology code) of each artifact piece of one slide; none when the slide
    has no artifacts (probability 1 - `slide_probability`) or artifacts are off."""
    a = preset.artifacts
    if not atlas.artifacts or rng.random() >= a["slide_probability"]:
        return []
    tissue = grid_index >= 0
    free = tissue.copy()
    free[tissue] = ~lesion_mask[grid_index[tissue]]
    n = int(tissue.sum())
    total = max(1, int(round(rng.uniform(*a["fraction"]) * n)))
    n_pieces = int(rng.integers(a["pieces"][0], a["pieces"][1] + 1))
    sizes = largest_remainder(rng.dirichlet(np.full(n_pieces, 2.0)), total)
    out = []
    for k in sizes[sizes > 0]:
        kind = atlas.artifacts[int(rng.integers(len(atlas.artifacts)))]
        if not free.any():
            break
        cells = SHAPES[kind](free, tissue, int(k), rng)
        free.ravel()[cells] = False
        out.append((grid_index.ravel()[cells], atlas.index(kind)))
    return out
