"""Isolated patches of a slide in linear time: candidates from the k-means pass, density on a sample.

`rare.outlier_scores` measures every patch against an 8,192-patch reference: O(N * 8192 * D), most
of the default summary's time on a 100k-patch slide. Only the few patches a summary's quota can
take need a density estimate, and the slide's k-means (shared with every sampler of a study)
already says which patches lie far from their centroid or sit in a tiny cluster. So:

1. `candidate_patches`: the patches farthest from their centroid (absolute and relative to their
   cluster's spread) plus every member of a tiny cluster: O(N) from the k-means result;
2. `isolation`: mean distance of each candidate to its k nearest patches of a seeded reference
   sample, divided by the same figure for the reference's own patches (1 = a typical patch).
"""

from __future__ import annotations

import faiss
import numpy as np

from wsisum.sampling.kmeans import KMeansResult

TINY_CLUSTER = 8  # a cluster of at most this many patches is a candidate morphology of its own


def candidate_patches(km: KMeansResult, n_candidates: int) -> np.ndarray:
    """Sorted indices of up to ~2 x n_candidates patches that may be isolated: the farthest from their
    centroid, the farthest relative to their own cluster's mean spread, and tiny clusters' members."""
    n = len(km.assign)
    if n <= n_candidates:
        return np.arange(n)
    sizes = np.bincount(km.assign, minlength=km.k)
    spread = np.bincount(km.assign, weights=km.sqdist, minlength=km.k) / np.maximum(sizes, 1)
    relative = km.sqdist / np.maximum(spread[km.assign], 1e-12)
    half = max(1, n_candidates // 2)
    far = np.argpartition(-km.sqdist, half - 1)[:half]
    odd = np.argpartition(-relative, half - 1)[:half]
    tiny = np.flatnonzero(sizes[km.assign] <= TINY_CLUSTER)[:n_candidates]
    return np.unique(np.concatenate([far, odd, tiny]))


def knn_distance(queries: np.ndarray, reference: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    """(Q,) mean L2 distance of each query to its k nearest reference rows (exact: Q and R are small)."""
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    kk = min(k + int(skip_self), reference.shape[0])
    dist, _ = index.search(queries, kk)
    d = np.sqrt(np.maximum(dist[:, int(skip_self) :], 0.0))
    return d.mean(1).astype(np.float64)


def isolation(
    features: np.ndarray, candidates: np.ndarray, rng: np.random.Generator, reference: int = 2048, k: int = 5
) -> np.ndarray:
    """(len(candidates),) isolation of each candidate: its k-NN distance in a seeded reference sample,
    over the median k-NN distance of the reference patches among themselves. A candidate that is
    itself in the sample finds itself at distance 0: the first hit of every candidate is then dropped
    as the reference's own are (one neighbour fewer for the others; the ranking is what matters)."""
    n = features.shape[0]
    ref_idx = np.arange(n) if n <= reference else np.sort(rng.choice(n, reference, replace=False))
    # k shrinks with the sample so the score stays a density estimate at the same scale as the slide
    kk = max(1, round(k * len(ref_idx) / n))
    ref = np.ascontiguousarray(features[ref_idx], dtype=np.float32)
    typical = float(np.median(knn_distance(ref, ref, kk, skip_self=True)))
    queries = np.ascontiguousarray(features[candidates], dtype=np.float32)
    score = knn_distance(queries, ref, kk, skip_self=True)
    return score / typical if typical > 0 else np.ones(len(candidates))
