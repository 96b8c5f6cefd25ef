"""Training pools: each epoch a fresh cluster-proportional draw from the FULL bag, clusters cached.

The original samples one fixed 500-patch pool per slide offline and trains on it forever. Here the
k-means of a slide is computed once (memory + optional disk cache), and every epoch draws a new
stratified pool from it, so the model sees new patches each epoch at the cost of a random draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsisum.sampling.allocation import allocate
from wsisum.sampling.cluster_cache import ClusterStore
from wsisum.sampling.samplers import draw_per_stratum
from wsisum.seeding import rng_for


def grid_positions(coords: torch.Tensor) -> torch.Tensor:
    """Level-0 pixel coords (N, 2) -> grid units from the bag's own top-left (float).

    The patch stride is the smallest non-zero gap between distinct coordinate values, so positions
    are comparable between scanners and magnifications; unknown coords (-1) map to 0.
    """
    c = coords.double()
    known = (coords >= 0).all(1)
    if not known.any():
        return torch.zeros(coords.shape, dtype=torch.float32)
    ck = c[known]
    gaps = []
    for axis in range(2):
        u = torch.unique(ck[:, axis])
        if len(u) > 1:
            gaps.append(torch.diff(u).min())
    stride = min(gaps).item() if gaps else 1.0
    pos = (c - ck.min(0).values) / stride
    return torch.where(known[:, None], pos, torch.zeros_like(pos)).float()


class ClusterCache:
    """A pool's clustering settings (k, seed, normalisation) bound to the study's `ClusterStore`."""

    def __init__(
        self,
        directory: str | Path | None,
        n_clusters: int,
        seed: int,
        normalize: bool = False,
        store: ClusterStore | None = None,
    ):
        self.store = store if store is not None else ClusterStore(directory)
        self.n_clusters, self.seed, self.normalize = int(n_clusters), int(seed), bool(normalize)

    def rare_order(
        self, slide_id: str, features: np.ndarray, source: str, size: int, idf: np.ndarray | None = None
    ) -> np.ndarray:
        """The first `size` patches of the slide's outlier-weighted farthest-point order (cached)."""
        return self.store.rare_order(features, size, seed=self.seed, slide_id=slide_id, source=source, idf=idf)

    def assignments(self, slide_id: str, features: np.ndarray, source: str) -> np.ndarray:
        km = self.store.kmeans(
            features, self.n_clusters, seed=self.seed, slide_id=slide_id, source=source, normalize=self.normalize
        )
        return km.assign


class PoolTransform:
    """Dataset transform: replace a full bag by this epoch's pool of `pool_size` patches.

    Deterministic for (seed, slide_id, epoch); set `epoch` before each epoch's loader is built.
    `pool_size=None` keeps the whole bag (still adds grid positions).
    """

    def __init__(
        self,
        pool_size: int | None = 500,
        n_clusters: int = 50,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        normalize: bool = False,
        allocation_power: float = 1.0,
        min_per_cluster: int = 0,
        rare_quota: float = 0.0,
        store: ClusterStore | None = None,
    ):
        self.pool_size, self.seed, self.epoch = pool_size, int(seed), 0
        self.cache = ClusterCache(cache_dir, n_clusters, seed, normalize, store)
        if not 0.0 <= float(rare_quota) <= 1.0:
            raise ValueError(f"rare_quota must be in [0, 1], got {rare_quota}")
        self.allocation_power, self.min_per_cluster = float(allocation_power), int(min_per_cluster)
        self.rare_quota = float(rare_quota)

    def rare_count(self, size: int) -> int:
        return round(self.rare_quota * size)

    def pool_indices(
        self,
        slide_id: str,
        features: np.ndarray,
        source: str,
        epoch: int | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        """Sorted pool: `rare_quota` of it from the outlier-weighted farthest-point order (the slide's
        isolated patches, the same every epoch; cohort-weighted with `idf`), the rest a seeded cluster-
        stratified draw of the others, size**allocation_power per cluster with at least `min_per_cluster`."""
        n = features.shape[0]
        if self.pool_size is None or n <= self.pool_size:
            return np.arange(n)
        rare = self.cache.rare_order(slide_id, features, source, self.rare_count(self.pool_size), idf)
        assign = self.cache.assignments(slide_id, features, source).astype(np.int64)
        free = np.ones(n, dtype=bool)
        free[rare] = False
        sizes = np.bincount(assign[free], minlength=int(assign.max()) + 1)
        alloc = allocate(sizes, self.pool_size - len(rare), self.min_per_cluster, self.allocation_power)
        rng = rng_for(self.seed, slide_id, "pool", self.epoch if epoch is None else epoch)
        members = np.flatnonzero(free)
        drawn = members[draw_per_stratum(assign[members], alloc, rng)]
        return np.sort(np.concatenate([rare, drawn]))

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        idx = self.pool_indices(item["slide_id"], item["features"].numpy(), item["path"])
        t = torch.from_numpy(idx)
        item["features"], item["coords"] = item["features"][t], item["coords"][t]
        item["pos"] = grid_positions(item["coords"])
        item["pool_indices"] = t
        return item
