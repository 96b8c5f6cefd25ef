"""Seeded k-means on faiss (CUDA faiss when a GPU is present, faiss-cpu otherwise; same API).

faiss initialises with a random subset of points; we seed it with k-means++ (D^2 sampling) on the
same training subsample instead, because a random start on a slide dominated by one tissue type
often puts most centroids inside that one type and merges the rare ones — exactly the patches a
summary must not lose. faiss has no k-means++ of its own, hence the few lines of numpy below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np

from wsisum.seeding import int_seed_for

log = logging.getLogger(__name__)
MAX_POINTS_PER_CENTROID = 256  # faiss' own default subsample for training
SMALL_PROBLEM = 20_000 * 768  # N x D below which k-means runs single-threaded


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, D) float32
    assign: np.ndarray  # (N,) int64 cluster of every patch
    sqdist: np.ndarray  # (N,) squared distance of every patch to its centroid

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def gpu_available() -> bool:
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with prob ~ D^2."""
    n = x.shape[0]
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(n)]
    sq_norms = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq_norms - 2 * x @ centres[0] + centres[0] @ centres[0], 0)
    for j in range(1, k):
        total = d2.sum()
        i = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centres[j] = x[i]
        d2 = np.minimum(d2, np.maximum(sq_norms - 2 * x @ centres[j] + centres[j] @ centres[j], 0))
    return centres


def kmeans(
    features: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    slide_id: str = "",
    niter: int = 20,
    normalize: bool = False,
    device: str = "auto",
) -> KMeansResult:
    """Cluster the rows of `features` into min(k, N) clusters, deterministically for (seed, slide_id).

    `normalize=True` L2-normalises rows first (spherical k-means on directions, which suits
    LayerNorm'd foundation-model features whose norms carry little meaning). `device`: auto|cpu|cuda.
    """
    x = np.ascontiguousarray(features, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    k = int(min(k, n))
    if k <= 1 or n == k:
        assign = np.zeros(n, dtype=np.int64) if k <= 1 else np.arange(n, dtype=np.int64)
        centroids = x.mean(0, keepdims=True) if k <= 1 else x.copy()
        return KMeansResult(centroids, assign, ((x - centroids[assign]) ** 2).sum(1))
    rng = np.random.default_rng(int_seed_for(seed, slide_id, "kmeans"))
    train = x
    if n > MAX_POINTS_PER_CENTROID * k:
        train = x[np.sort(rng.choice(n, MAX_POINTS_PER_CENTROID * k, replace=False))]
    init = kmeans_plus_plus(train, k, rng)
    use_gpu = device == "cuda" or (device == "auto" and gpu_available())
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=int_seed_for(seed, slide_id, "faiss"),
        spherical=normalize,
        gpu=bool(use_gpu),
        max_points_per_centroid=MAX_POINTS_PER_CENTROID,
        min_points_per_centroid=1,
        verbose=False,
    )
    # faiss' OpenMP threads cost far more than they save on one slide's worth of points (measured 30x
    # slower with 2 threads on 100-patch slides on a 2-core machine); use them only for big slides.
    threads = faiss.omp_get_max_threads()
    if n * d < SMALL_PROBLEM and not use_gpu:
        faiss.omp_set_num_threads(1)
    try:
        km.train(train, init_centroids=init)
        sqdist, assign = km.index.search(x, 1)
    finally:
        faiss.omp_set_num_threads(threads)
    return KMeansResult(km.centroids.copy(), assign[:, 0].astype(np.int64), sqdist[:, 0])
