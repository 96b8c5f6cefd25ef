"""The baseline samplers of the WSISum study and its clustering-based sparse sampling.

Each is a `Sampler`: `select(features, K, slide_id=..., coords=...)` returns K distinct indices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wsisum.errors import InputError
from wsisum.sampling.allocation import allocate
from wsisum.sampling.base import Sampler, Selection


def draw_per_stratum(
    strata: np.ndarray,
    alloc: np.ndarray,
    rng: np.random.Generator,
    prefer: np.ndarray | None = None,
    pick: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Take alloc[j] members (positions into `strata`) of every stratum j, strata in order: at random,
    the lowest `prefer` values first, or as `pick(members, count)` chooses."""
    order = np.argsort(strata, kind="stable")
    bounds = np.searchsorted(strata[order], np.arange(len(alloc) + 1))
    picked = [np.zeros(0, dtype=np.int64)]
    for j, a in enumerate(alloc):
        if a == 0:
            continue
        members = order[bounds[j] : bounds[j + 1]]
        if pick is not None:
            picked.append(pick(members, int(a)))
        elif prefer is None:
            picked.append(rng.choice(members, int(a), replace=False))
        else:
            picked.append(members[np.argsort(prefer[members], kind="stable")[: int(a)]])
    return np.concatenate(picked)


class RandomSampler(Sampler):
    """Uniform without replacement: the baseline every summary must beat."""

    name = "random"

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        return Selection(rng.choice(features.shape[0], budget, replace=False))


class KMeansSampler(Sampler):
    """WSISum's low level: k-means over the slide, then cluster-proportional stratified sampling.

    Fixed against the original: exact-K capped allocation (never overfills a cluster, never returns
    fewer than K), no padding duplicates, any N; `min_per_cluster` keeps rare morphologies;
    `within="nearest"` takes the patches closest to each centroid instead of random members.
    """

    name = "kmeans"

    def __init__(
        self,
        seed: int = 0,
        n_clusters: int = 50,
        min_per_cluster: int = 0,
        normalize: bool = False,
        niter: int = 20,
        within: str = "random",
        device: str = "auto",
    ):
        super().__init__(seed)
        if within not in ("random", "nearest"):
            raise InputError(None, f"sampler.within must be 'random' or 'nearest', got {within!r}")
        self.n_clusters, self.min_per_cluster = int(n_clusters), int(min_per_cluster)
        self.normalize, self.niter, self.within, self.device = bool(normalize), int(niter), within, device

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        km = self.clusters.kmeans(
            features,
            self.n_clusters,
            seed=self.seed,
            slide_id=slide_id,
            source=context.get("source"),
            niter=self.niter,
            normalize=self.normalize,
            device=self.device,
        )
        sizes = np.bincount(km.assign, minlength=km.k)
        alloc = allocate(sizes, budget, self.min_per_cluster)
        prefer = km.sqdist if self.within == "nearest" else None
        idx = draw_per_stratum(km.assign, alloc, rng, prefer)
        return Selection(idx, attrs={"n_clusters": km.k, "clusters_kept": int((alloc > 0).sum())})

    def describe(self) -> dict:
        return super().describe() | {
            "n_clusters": self.n_clusters,
            "min_per_cluster": self.min_per_cluster,
            "normalize": self.normalize,
            "within": self.within,
        }


def patch_entropy(features: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row's |feature| distribution (the original benchmark's score)."""
    a = np.abs(np.asarray(features, dtype=np.float32))
    total = a.sum(1, keepdims=True)
    p = np.divide(a, total, out=np.full_like(a, 1.0 / a.shape[1]), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    return -plogp.sum(1)


class EntropySampler(Sampler):
    """Top-K patches by Shannon entropy of |feature| (ties broken by index: deterministic)."""

    name = "entropy"

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        h = patch_entropy(features)
        idx = np.lexsort((np.arange(len(h)), -h))[:budget]
        return Selection(idx, scores=h[idx], score=float(h[idx].mean()))


def grid_cells(coords: np.ndarray, n_cells: int) -> np.ndarray:
    """Cell id per patch on a grid of about `n_cells` equal squares over the coords' bounding box.

    Degenerate extents (one row, one column, one point) get a single cell along that axis instead
    of a division by zero.
    """
    c = np.asarray(coords, dtype=np.float64)
    lo, extent = c.min(0), np.ptp(c, 0)
    if (extent <= 0).all():
        return np.zeros(len(c), dtype=np.int64)
    if (extent <= 0).any():
        per_axis = np.where(extent > 0, n_cells, 1)
    else:
        side = np.sqrt(extent[0] * extent[1] / max(n_cells, 1))
        per_axis = np.maximum(1, np.round(extent / side)).astype(np.int64)
    per_axis = np.asarray(per_axis, dtype=np.int64)
    safe = np.where(extent > 0, extent, 1.0)
    ij = np.minimum((c - lo) / safe * per_axis, per_axis - 1).astype(np.int64)
    _, cells = np.unique(ij[:, 0] * per_axis[1] + ij[:, 1], return_inverse=True)
    return cells.astype(np.int64)


class LocationSampler(Sampler):
    """Spatially stratified: a grid over the tissue's coords, budget spread over occupied cells.

    The grid has about `cells_per_budget` x K cells, so most occupied cells give one patch and the
    summary covers the whole tissue evenly.
    """

    name = "location"

    def __init__(self, seed: int = 0, cells_per_budget: float = 1.0):
        super().__init__(seed)
        self.cells_per_budget = float(cells_per_budget)

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        if coords is None:
            raise InputError(None, f"slide {slide_id}: the location sampler needs coords (bag has none)")
        cells = grid_cells(coords, max(1, round(budget * self.cells_per_budget)))
        alloc = allocate(np.bincount(cells), budget)
        return Selection(draw_per_stratum(cells, alloc, rng))

    def describe(self) -> dict:
        return super().describe() | {"cells_per_budget": self.cells_per_budget}


class AttentionSampler(Sampler):
    """Top-K patches by the attention scores of a trained attention-MIL model.

    `scorer` maps features (N, D) to one score per patch; the `attention` sampler config builds it
    from an ABMIL checkpoint (`sampler.ckpt_path=`). Without one there is nothing to rank by.
    """

    name = "attention"

    def __init__(self, seed: int = 0, scorer: Callable[[np.ndarray], np.ndarray] | None = None):
        super().__init__(seed)
        if scorer is None:
            raise InputError(
                None,
                "sampler=attention needs a trained attention-MIL model: pass sampler.ckpt_path=<ABMIL checkpoint> "
                "(train one with wsisum-evaluate mil=abmil)",
            )
        self.scorer = scorer

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        s = np.asarray(self.scorer(features), dtype=np.float64).reshape(-1)
        if s.shape[0] != features.shape[0]:
            raise RuntimeError(f"attention scorer returned {s.shape[0]} scores for {features.shape[0]} patches")
        idx = np.lexsort((np.arange(len(s)), -s))[:budget]
        return Selection(idx, scores=s[idx], score=float(s[idx].sum()))
