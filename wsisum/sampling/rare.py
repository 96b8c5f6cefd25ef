"""Rare-morphology quota: find the patches a proportional draw rounds away, and keep them on purpose.

A 3-patch isolated tumour-cell cluster among 3,000 lymph-node patches is invisible to cluster-
proportional sampling (its share rounds to zero) and barely moves a slide embedding. It is, however,
far from the rest of the slide in feature space: its patches have few close neighbours. Two pieces:

- `outlier_scores`: mean distance of every patch to its k nearest neighbours (faiss), measured
  against a seeded reference subsample on large bags so that a 100k-patch slide costs seconds;
- `weighted_farthest_points`: greedy k-center (farthest-point) selection where each patch's
  distance to the chosen set is multiplied by its outlier score. Plain farthest-point covers the
  slide's extremes; the weight makes it prefer isolated patches over the sparse tail of a big
  cluster. On the demo cohort's CAMELYON-like slides this keeps a lesion patch in 98 % of lesion-
  positive slides at 64 patches (95 % of ITC slides), against 58 % for cluster-proportional sampling.
"""

from __future__ import annotations

import faiss
import numpy as np

from wsisum.seeding import rng_for

IDF_FLOOR = 0.1  # a patch whose visual word is on every slide keeps a tenth of the weight of idf 1


def outlier_scores(
    features: np.ndarray, k: int = 5, reference: int = 8192, seed: int = 0, slide_id: str = ""
) -> np.ndarray:
    """(N,) mean L2 distance to the k nearest other patches, divided by its median (1 = typical).

    Beyond `reference` patches, neighbours are searched in a seeded random subsample and k is scaled
    down with it, which keeps the score a density estimate at O(N * reference) cost.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = x.shape[0]
    if n < 2:
        return np.ones(n, dtype=np.float64)
    if n > reference:
        ref_idx = np.sort(rng_for(seed, slide_id, "outlier-reference").choice(n, reference, replace=False))
        kk = max(1, round(k * reference / n))
    else:
        ref_idx, kk = None, min(k, n - 1)
    ref = x if ref_idx is None else x[ref_idx]
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(ref)
    dist, nn = index.search(x, kk + 1)
    hit = nn if ref_idx is None else np.where(nn >= 0, ref_idx[np.clip(nn, 0, None)], -1)
    not_self = hit != np.arange(n)[:, None]  # a patch finds itself at distance 0: drop that hit
    first = np.argsort(~not_self, axis=1, kind="stable")[:, :kk]  # the first kk hits that are not itself
    d = np.sqrt(np.maximum(np.take_along_axis(dist, first, axis=1), 0.0))
    score = d.mean(1).astype(np.float64)
    med = float(np.median(score))
    return score / med if med > 0 else np.ones(n, dtype=np.float64)


def rarity_weights(isolation: np.ndarray, idf: np.ndarray | None) -> np.ndarray:
    """Weights of the rare-quota order: per-slide isolation times cohort rarity (`cohort_rarity`)
    when known. Words found on every slide keep IDF_FLOOR, so isolation still orders them."""
    return isolation if idf is None else isolation * (IDF_FLOOR + np.asarray(idf, dtype=np.float64))


def weighted_farthest_points(
    features: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    first: int | None = None,
) -> np.ndarray:
    """k indices chosen greedily: each next one maximises weight * (distance to the nearest chosen).

    Starts from `first`, else from the highest-weight patch (the most isolated one); `exclude` marks
    patches already taken elsewhere, which count as chosen (they are covered) but are never returned.
    Deterministic: ties go to the lower index. Each step measures the new centre against only the
    patches it can come closer to: by the triangle inequality a patch p cannot, when the new centre
    is at least 2 * d(p, nearest chosen) from that chosen patch. Late steps then touch a small part
    of the slide (100k x 1024 features, 256 centres: seconds instead of half a minute).
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    n = x.shape[0]
    k = min(int(k), n - (0 if exclude is None else int(np.count_nonzero(exclude))))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sq = (x.astype(np.float64) ** 2).sum(1)
    cover = _Cover(x, sq)
    taken = np.zeros(n, dtype=bool)
    if exclude is not None and exclude.any():
        taken |= exclude
        cover.add(np.flatnonzero(exclude))
    chosen = []
    for step in range(k):
        if cover.empty:  # nothing chosen yet: `first`, else the most isolated patch
            j = int(first) if first is not None and step == 0 else int(np.argmax(np.where(taken, -np.inf, w)))
        else:
            j = int(np.argmax(np.where(taken, -np.inf, w * cover.mind)))
        chosen.append(j)
        taken[j] = True
        cover.add(np.array([j]))
    return np.asarray(chosen, dtype=np.int64)


class _Cover:
    """Each patch's distance to its nearest centre (`mind`) and which centre that is, kept up to date."""

    def __init__(self, x: np.ndarray, sq: np.ndarray):
        self.x, self.sq = x, sq
        self.mind = np.full(x.shape[0], np.inf)
        self.near = np.full(x.shape[0], -1, dtype=np.int64)  # position in `centres`
        self.centres: list[int] = []

    @property
    def empty(self) -> bool:
        return not self.centres

    def distances(self, rows: np.ndarray | slice, j: np.ndarray) -> np.ndarray:
        d = self.sq[rows][:, None] + self.sq[j][None, :] - 2.0 * (self.x[rows] @ self.x[j].T).astype(np.float64)
        return np.sqrt(np.maximum(d, 0.0))

    def add(self, j: np.ndarray) -> None:
        rows: np.ndarray | slice = slice(None)
        if len(j) == 1 and self.centres:
            # centre-to-centre distances bound which patches the new centre can possibly come closer to
            to_old = self.distances(np.asarray(self.centres), j)[:, 0]
            slack = 1e-6 * (1.0 + self.mind)  # rounding in the distances must never prune a real update
            candidates = np.flatnonzero(to_old[self.near] < 2.0 * self.mind + slack)
            if len(candidates) < 0.5 * len(self.mind):
                rows = candidates
        d = self.distances(rows, j)
        best = d.argmin(1)
        dist = d[np.arange(d.shape[0]), best]
        idx = np.arange(len(self.mind))[rows]
        closer = dist < self.mind[idx]
        self.mind[idx[closer]] = dist[closer]
        self.near[idx[closer]] = len(self.centres) + best[closer]
        self.centres.extend(int(i) for i in j)
