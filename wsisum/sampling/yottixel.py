"""Yottixel's mosaic (Kalra et al. 2020, "Yottixel – an image search engine for large archives of
histopathology whole slide images", Medical Image Analysis 65).

Appearance groups first, then space inside each group, so the mosaic keeps every tissue type and,
within a type, patches spread over the slide.
"""

from __future__ import annotations

import faiss
import numpy as np

from wsisum.errors import InputError
from wsisum.sampling.allocation import allocate
from wsisum.sampling.base import Sampler, Selection
from wsisum.sampling.kmeans import kmeans


def nearest_untaken(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre in turn, the index of the nearest point not taken by an earlier centre (faiss).

    The first len(centres) neighbours of a centre always hold an untaken point, since earlier
    centres took fewer than that.
    """
    p = np.ascontiguousarray(points, dtype=np.float32)
    c = np.ascontiguousarray(centres, dtype=np.float32)
    index = faiss.IndexFlatL2(p.shape[1])
    index.add(p)
    _, nn = index.search(c, min(len(c), len(p)))
    taken = np.zeros(len(p), dtype=bool)
    out = np.empty(len(c), dtype=np.int64)
    for r, row in enumerate(nn):
        j = row[~taken[row]][0]
        taken[j] = True
        out[r] = j
    return out


def spatial_picks(coords: np.ndarray, k: int, seed: int, key: str) -> np.ndarray:
    """k positions in `coords`: spatial k-means with k centres, then each centre's nearest free patch."""
    xy = np.asarray(coords, dtype=np.float64)
    xy = (xy - xy.min(0)) / max(float(np.ptp(xy, 0).max()), 1.0)  # unit box: float32-safe for any slide size
    km = kmeans(xy, k, seed=seed, slide_id=key, niter=10)  # 2-D points settle fast; auto on 100k asks ~5000 centres
    return nearest_untaken(xy, km.centroids)


class MosaicSampler(Sampler):
    """Yottixel's mosaic: k-means of the slide into `n_groups` (9) groups, spatial k-means inside
    each, and for every spatial centre the nearest patch not yet taken.

    budget=auto keeps max(1, round(percent * |group|)) patches per group (the reference's 5 %);
    a fixed K is shared over the groups in proportion to their sizes (largest remainders, every
    group at least one where K allows). Departs from the reference: groups come from the patch
    features (the original clusters mean RGB colour, which the bags do not carry); round() is
    half-up. Needs coords.
    """

    name = "mosaic"
    auto_size = True

    def __init__(self, seed: int = 0, n_groups: int = 9, percent: float = 0.05, normalize: bool = False):
        super().__init__(seed)
        if not 0 < float(percent) <= 1:
            raise InputError(None, f"sampler.percent must be in (0, 1], got {percent}")
        self.n_groups, self.percent, self.normalize = int(n_groups), float(percent), bool(normalize)

    def group_sizes(self, sizes: np.ndarray, budget: int | None) -> np.ndarray:
        """Patches per group: the reference's percentage (budget None) or K shared in proportion."""
        if budget is None:
            return np.where(sizes > 0, np.maximum(1, np.floor(self.percent * sizes + 0.5)), 0).astype(np.int64)
        return allocate(sizes, budget, min_per_stratum=1)

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        if coords is None:
            raise InputError(None, f"slide {slide_id}: the mosaic sampler needs coords (bag has none)")
        km = self.clusters.kmeans(
            features,
            self.n_groups,
            seed=self.seed,
            slide_id=slide_id,
            source=context.get("source"),
            normalize=self.normalize,
        )
        counts = self.group_sizes(np.bincount(km.assign, minlength=km.k), budget)
        picked = []
        for g in np.flatnonzero(counts):
            members = np.flatnonzero(km.assign == g)
            picked.append(members[spatial_picks(coords[members], int(counts[g]), self.seed, f"{slide_id}/group{g}")])
        return Selection(np.concatenate(picked), attrs={"n_groups": km.k})

    def describe(self) -> dict:
        return super().describe() | {"n_groups": self.n_groups, "percent": self.percent, "normalize": self.normalize}
