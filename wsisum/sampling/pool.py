"""Training pools: each epoch a fresh cluster-proportional draw from the FULL bag, clusters cached.

The original samples one fixed 500-patch pool per slide offline and trains on it forever. Here the
k-means of a slide is computed once (memory + optional disk cache), and every epoch draws a new
stratified pool from it, so the model sees new patches each epoch at the cost of a random draw.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsisum.data.atomic import atomic_path
from wsisum.sampling.allocation import allocate
from wsisum.sampling.kmeans import kmeans
from wsisum.sampling.samplers import _draw_per_stratum
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
    """k-means assignments per slide, in memory and (optionally) as `.npz` files in `directory`."""

    def __init__(self, directory: str | Path | None, n_clusters: int, seed: int, normalize: bool = False):
        self.directory = None if directory is None else Path(directory)
        self.n_clusters, self.seed, self.normalize = int(n_clusters), int(seed), bool(normalize)
        self._memory: dict[str, np.ndarray] = {}

    def _file(self, slide_id: str, source: str) -> Path | None:
        if self.directory is None:
            return None
        st = Path(source).stat()
        key = f"{source}|{st.st_size}|{st.st_mtime_ns}|{self.n_clusters}|{self.seed}|{self.normalize}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]  # a changed source file gets a new entry
        return self.directory / f"{slide_id}.{digest}.npz"

    def assignments(self, slide_id: str, features: np.ndarray, source: str) -> np.ndarray:
        if slide_id in self._memory:
            return self._memory[slide_id]
        path = self._file(slide_id, source)
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                assign = z["assign"]
            if len(assign) == len(features):
                self._memory[slide_id] = assign
                return assign
        assign = kmeans(features, self.n_clusters, seed=self.seed, slide_id=slide_id, normalize=self.normalize).assign
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, assign=assign.astype(np.int32))
        self._memory[slide_id] = assign
        return assign


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
    ):
        self.pool_size, self.seed, self.epoch = pool_size, int(seed), 0
        self.cache = ClusterCache(cache_dir, n_clusters, seed, normalize)

    def pool_indices(self, slide_id: str, features: np.ndarray, source: str, epoch: int | None = None) -> np.ndarray:
        n = features.shape[0]
        if self.pool_size is None or n <= self.pool_size:
            return np.arange(n)
        assign = self.cache.assignments(slide_id, features, source)
        sizes = np.bincount(assign)
        alloc = allocate(sizes, self.pool_size)
        rng = rng_for(self.seed, slide_id, "pool", self.epoch if epoch is None else epoch)
        return np.sort(_draw_per_stratum(assign.astype(np.int64), alloc, rng))

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        idx = self.pool_indices(item["slide_id"], item["features"].numpy(), item["path"])
        t = torch.from_numpy(idx)
        item["features"], item["coords"] = item["features"][t], item["coords"][t]
        item["pos"] = grid_positions(item["coords"])
        item["pool_indices"] = t
        return item
