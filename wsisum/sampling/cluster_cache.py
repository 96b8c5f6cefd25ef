"""One clustering per slide per study: k-means results and rare-patch orders, shared by every stage.

The training pools, `sampler=kmeans` at every budget, `sampler=wsisum`'s pool and the mosaic's
groups all cluster the same slide with the same k and seed; without a shared store a study repeats
each k-means five times or more. An entry is keyed by the source bag's identity (resolved path, size,
mtime: a changed file never meets a stale entry; without a path, a digest of the features) and by
everything that changes the result (k, seed, slide id, iterations, normalisation, device). Entries
are written atomically (temp file + rename), so concurrent writers from several processes or nodes
leave either no entry or a whole one; a reader that finds a damaged entry recomputes it.

`STATS` counts per process what was computed and what was reused; the summarize stage adds its
workers' counts to its own, and the pipeline records them per stage (study.json, the report).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.sampling.kmeans import KMeansResult, gpu_available, kmeans
from wsisum.sampling.rare import outlier_scores, rarity_weights, weighted_farthest_points

log = logging.getLogger(__name__)
STATS: Counter = Counter()  # kmeans_computed, kmeans_reused, rare_computed, rare_reused (this process)
MEMORY_ENTRIES = 1024  # recent entries kept in memory (the disk holds the rest)
VERSION = 1  # bump when what an entry holds changes


def stats_snapshot() -> dict[str, int]:
    return dict(STATS)


def stats_since(before: dict[str, int]) -> dict[str, int]:
    """What this process computed and reused since `before` (a snapshot)."""
    return {k: v - before.get(k, 0) for k, v in STATS.items() if v - before.get(k, 0)}


def format_stats(counts: dict[str, int]) -> str:
    """'k-means 330 computed, 660 reused; rare order 330 computed' (what a log line says)."""
    parts = []
    for kind, label in (("kmeans", "k-means"), ("rare", "rare order")):
        done, reused = counts.get(f"{kind}_computed", 0), counts.get(f"{kind}_reused", 0)
        if done or reused:
            parts.append(f"{label} {done} computed, {reused} reused")
    return "; ".join(parts) or "nothing"


def source_identity(source: str | Path | None, features: np.ndarray) -> str:
    """The bag's file identity, or a digest of its features when it has no file."""
    if source:
        p = Path(source).expanduser().resolve()
        try:
            st = p.stat()
            return f"{p}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            pass
    x = np.ascontiguousarray(features)
    return f"sha1:{hashlib.sha1(x.view(np.uint8)).hexdigest()}|{x.dtype}|{x.shape}"


class ClusterStore:
    """k-means results and rare orders per slide, in memory and (with `directory`) as `.npz` files."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = None if directory is None else Path(directory)
        self.memory: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict:  # worker processes get the directory, not this process' memory
        return {"directory": self.directory, "memory": OrderedDict()}

    def _key(self, kind: str, slide_id: str, source: str | Path | None, features: np.ndarray, params: str) -> str:
        n, d = features.shape
        text = f"v{VERSION}|{kind}|{slide_id}|{source_identity(source, features)}|{n}x{d}|{params}"
        return f"{slide_id}.{kind}.{hashlib.sha1(text.encode()).hexdigest()[:16]}"

    def _load(self, key: str) -> dict[str, np.ndarray] | None:
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        path = None if self.directory is None else self.directory / f"{key}.npz"
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                entry = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # damaged: recomputed
            log.warning("%s: unreadable cache entry (%s), recomputing", path, type(err).__name__)
            return None
        self._remember(key, entry)
        return entry

    def _save(self, key: str, entry: dict[str, np.ndarray]) -> None:
        self._remember(key, entry)
        if self.directory is not None:
            with atomic_path(self.directory / f"{key}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, **entry)

    def _remember(self, key: str, entry: dict[str, np.ndarray]) -> None:
        self.memory[key] = entry
        self.memory.move_to_end(key)
        while len(self.memory) > MEMORY_ENTRIES:
            self.memory.popitem(last=False)

    def kmeans(
        self,
        features: np.ndarray,
        k: int,
        *,
        seed: int,
        slide_id: str,
        source: str | Path | None = None,
        niter: int = 20,
        normalize: bool = False,
        device: str = "auto",
    ) -> KMeansResult:
        """`wsisum.sampling.kmeans.kmeans` of this slide, computed once per (bag, k, seed, ...)."""
        resolved = ("cuda" if gpu_available() else "cpu") if device == "auto" else device
        params = f"k={int(k)}|seed={int(seed)}|niter={int(niter)}|normalize={bool(normalize)}|{resolved}"
        key = self._key("kmeans", slide_id, source, features, params)
        entry = self._load(key)
        if entry is not None and len(entry["assign"]) == features.shape[0]:
            STATS["kmeans_reused"] += 1
            return KMeansResult(entry["centroids"], entry["assign"].astype(np.int64), entry["sqdist"])
        km = kmeans(features, k, seed=seed, slide_id=slide_id, niter=niter, normalize=normalize, device=device)
        STATS["kmeans_computed"] += 1
        self._save(key, {"centroids": km.centroids, "assign": km.assign.astype(np.int32), "sqdist": km.sqdist})
        return km

    def rare_order(
        self,
        features: np.ndarray,
        size: int,
        *,
        seed: int,
        slide_id: str,
        source: str | Path | None = None,
        idf: np.ndarray | None = None,
    ) -> np.ndarray:
        """The first `size` patches of the slide's outlier-weighted farthest-point order; `idf` (per
        patch, `cohort_rarity`) weights isolation by how rare each patch is in the cohort. The order is
        prefix-consistent, so the longest one computed serves every shorter request."""
        size = min(int(size), features.shape[0])
        if size <= 0:
            return np.zeros(0, dtype=np.int64)
        prior = "" if idf is None else hashlib.sha1(np.ascontiguousarray(idf, dtype=np.float64)).hexdigest()[:12]
        key = self._key("rare", slide_id, source, features, f"seed={int(seed)}|idf={prior}")
        entry = self._load(key)
        if entry is not None and len(entry["order"]) >= size and (entry["order"] < features.shape[0]).all():
            STATS["rare_reused"] += 1
            return entry["order"][:size]
        w = rarity_weights(outlier_scores(features, seed=seed, slide_id=slide_id), idf)
        order = weighted_farthest_points(features, size, w).astype(np.int64)
        STATS["rare_computed"] += 1
        self._save(key, {"order": order})
        return order
