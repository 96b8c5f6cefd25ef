"""Montage-style summaries that size themselves: SDM (one patch per distance band) and SPLICE
(a sequential collage). Both accept budget=auto (their own size) or a fixed K.
"""

from __future__ import annotations

import numpy as np

from wsisum.errors import InputError
from wsisum.sampling.base import Sampler, Selection
from wsisum.sampling.rare import weighted_farthest_points


def one_per_bin(bins: np.ndarray, distance: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For every occupied bin, the member whose distance is closest to its bin's target (then lowest index)."""
    order = np.lexsort((np.arange(len(bins)), np.abs(distance - target[bins]), bins))
    _, first = np.unique(bins[order], return_index=True)
    return order[first]


class SDMSampler(Sampler):
    """Selection of Distinct Morphologies (Shafique et al. 2023, "Selection of Distinct Morphologies
    to Divide & Conquer Gigapixel Pathology Images", arXiv 2311.09902): the Euclidean distance of
    every patch to the slide's mean feature, binned, one patch per occupied bin (the "montage").

    budget=auto bins the distances to integers (width `bin_width`, 1 in the reference), so its size
    depends on the feature scale: L2-normalised features (distances < 2) give one or two patches,
    raw ones hundreds. A fixed K uses K quantile bins of the distance ranks (ties split by index, so
    every bin is occupied) and keeps each bin's median patch. The patch kept per integer bin is the
    one closest to the bin's value (the reference leaves the choice open).
    """

    name = "sdm"
    auto_size = True

    def __init__(self, seed: int = 0, bin_width: float = 1.0):
        super().__init__(seed)
        if float(bin_width) <= 0:
            raise InputError(None, f"sampler.bin_width must be positive, got {bin_width}")
        self.bin_width = float(bin_width)

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        x = np.asarray(features, dtype=np.float32)  # float32 rows: a 100k x 1024 slide is not copied to float64
        dist = np.linalg.norm(x - x.mean(0, dtype=np.float64).astype(np.float32), axis=1).astype(np.float64)
        n = len(dist)
        if budget is None:
            band = np.floor(dist / self.bin_width + 0.5).astype(np.int64)
            _, bins = np.unique(band, return_inverse=True)
            target = np.unique(band) * self.bin_width
            idx = one_per_bin(bins.reshape(-1), dist, target)
        else:
            order = np.argsort(dist, kind="stable")
            edges = (np.arange(budget + 1) * n) // budget  # K rank bins of n // K or n // K + 1 patches
            idx = order[(edges[:-1] + edges[1:] - 1) // 2]  # each bin's median rank
        return Selection(idx, scores=dist[idx], attrs={"n_bins": int(len(idx))})

    def describe(self) -> dict:
        return super().describe() | {"bin_width": self.bin_width}


def scan_order(coords: np.ndarray | None, n: int) -> np.ndarray:
    """Row-major scan of the slide: coords sorted by y, then x (file order when there are no coords)."""
    if coords is None:
        return np.arange(n)
    c = np.asarray(coords)
    return np.lexsort((c[:, 0], c[:, 1]))


def collage(x: np.ndarray, sq: np.ndarray, q: float, limit: int | None = None) -> np.ndarray:
    """SPLICE's sequence on rows in scan order: keep the first remaining row, drop every remaining row
    closer to it than the q-th percentile of their distances to it, repeat. Positions of the kept rows.

    Stops once more than `limit` are kept. Distances of the pointer to the remaining rows are one
    product per step; dropped rows are compacted away once they are half of the block.
    """
    pos = np.arange(len(x))
    block, bsq = x, sq
    alive = np.ones(len(x), dtype=bool)
    kept = []
    while True:
        live = np.flatnonzero(alive)
        if live.size == 0 or (limit is not None and len(kept) > limit):
            break
        p = int(live[0])
        kept.append(int(pos[p]))
        alive[p] = False
        if live.size == 1:
            break
        d2 = bsq + bsq[p] - 2.0 * (block @ block[p]).astype(np.float64)
        threshold = np.percentile(d2[alive], q, method="lower")  # an order statistic: same on d and d^2
        alive &= d2 >= threshold
        if alive.sum() < len(alive) // 2:
            keep = np.flatnonzero(alive)
            block, bsq, pos, alive = block[keep], bsq[keep], pos[keep], np.ones(len(keep), dtype=bool)
    return np.asarray(kept, dtype=np.int64)


class SpliceSampler(Sampler):
    """SPLICE (Alsaafin et al. 2024, "SPLICE - Streamlining Digital Pathology Image Processing",
    arXiv 2404.17704; a sequential collage of the slide): start at the first patch in scan order, drop
    every remaining patch closer to it than the `percentile`-th (30) percentile of their distances
    to it, move to the next remaining patch in scan order, repeat.

    budget=auto uses the percentile as given: the size grows like log(N) / -log(1 - q). A fixed K
    bisects the percentile (at most `max_iter` runs); a run that still misses K keeps the closest
    run below K and fills it with the patches farthest from those chosen. Departs from the
    reference: Euclidean distances of the features (the original compares RGB statistics); scan
    order is coords by y then x, or the file order when the bag has no coords.
    """

    name = "splice"
    auto_size = True

    def __init__(self, seed: int = 0, percentile: float = 30.0, max_iter: int = 12):
        super().__init__(seed)
        if not 0 <= float(percentile) <= 100:
            raise InputError(None, f"sampler.percentile must be in [0, 100], got {percentile}")
        self.percentile, self.max_iter = float(percentile), int(max_iter)

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        order = scan_order(coords, features.shape[0])
        x = np.ascontiguousarray(np.asarray(features, dtype=np.float32)[order])
        sq = (x.astype(np.float64) ** 2).sum(1)
        if budget is None:
            return Selection(order[collage(x, sq, self.percentile)], attrs={"percentile": self.percentile})
        n = len(x)
        lo, hi = 0.0, 100.0  # collage(q=0) keeps every patch (> K); search the q that keeps exactly K
        q = 100.0 * (1.0 - n ** (-1.0 / budget))  # first guess: a 1 - q share survives each step
        best, best_q = collage(x, sq, hi, budget), hi
        for _ in range(self.max_iter):
            kept = collage(x, sq, q, budget)
            if len(kept) == budget:
                best, best_q = kept, q
                break
            if len(kept) > budget:
                lo = q
            else:
                hi, best, best_q = q, kept, q
            q = (lo + hi) / 2
        if len(best) < budget:  # fill up, deterministically: the patches farthest from the collage
            exclude = np.zeros(n, dtype=bool)
            exclude[best] = True
            best = np.concatenate([best, weighted_farthest_points(x, budget - len(best), exclude=exclude)])
        return Selection(order[best], attrs={"percentile": float(best_q)})

    def describe(self) -> dict:
        return super().describe() | {"percentile": self.percentile, "max_iter": self.max_iter}
