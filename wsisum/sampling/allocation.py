"""Split a budget K over strata (clusters, grid cells) in proportion to their sizes, exactly.

The original WSISum rounds K * size / N per cluster and patches the total with a +-1 fix, which can
overfill a small cluster and then return fewer than K patches. Here: a capped largest-remainder
(Hamilton) allocation — sums to exactly K, never exceeds a stratum's size, optional floor per stratum.
"""

from __future__ import annotations

import numpy as np


def allocate(
    sizes: np.ndarray, budget: int, min_per_stratum: int = 0, power: float = 1.0, weights: np.ndarray | None = None
) -> np.ndarray:
    """Integer allocation a with sum(a) == min(K, sum(sizes)), 0 <= a <= sizes, ~ proportional to size**power.

    With `min_per_stratum` m every stratum first gets min(m, size) (the largest strata first when
    even that exceeds K), so rare morphologies are not rounded away. `power` < 1 (0.5 = square root)
    is sub-linear: a 3-patch cluster beside a 2,000-patch one gets a share of sqrt(3/2000) ~ 4 %
    instead of 0.15 %, so it survives rounding at the budgets users ask for. `weights` (non-negative,
    one per stratum) replace sizes**power as what the budget is split in proportion to; sizes stay
    the caps.
    """
    if power <= 0:
        raise ValueError("allocation power must be positive")
    sizes = np.asarray(sizes, dtype=np.int64)
    if (sizes < 0).any():
        raise ValueError("stratum sizes must be non-negative")
    total = int(sizes.sum())
    budget = min(int(budget), total)
    alloc = np.zeros_like(sizes)
    if budget <= 0:
        return alloc
    if min_per_stratum > 0:
        floor = np.minimum(sizes, int(min_per_stratum))
        if floor.sum() > budget:  # not even the floors fit: give them to the largest strata first
            order = np.argsort(-sizes, kind="stable")
            left = budget
            for j in order:
                take = min(int(floor[j]), left)
                alloc[j] = take
                left -= take
                if left == 0:
                    break
            return alloc
        alloc = floor.copy()
    # Hamilton rounding on the remaining budget; strata that hit their size drop out and the rest is
    # re-spread over the others (water-filling), so caps never make the total fall short of K.
    while (left := budget - int(alloc.sum())) > 0:
        open_ = sizes - alloc > 0
        quota = np.zeros(len(sizes), dtype=np.float64)
        weight = sizes[open_].astype(np.float64) ** power if weights is None else np.asarray(weights, float)[open_]
        if weight.sum() <= 0:  # every open stratum has zero weight: split what is left by size
            weight = sizes[open_].astype(np.float64)
        quota[open_] = left * weight / weight.sum()
        whole = np.minimum(np.floor(quota).astype(np.int64), sizes - alloc)
        alloc += whole
        left -= int(whole.sum())
        if left == 0:
            break
        rem = quota - whole  # largest remainders first; ties to the larger stratum, then lower index
        order = np.lexsort((np.arange(len(sizes)), -sizes, -rem))
        order = order[(sizes - alloc)[order] > 0][:left]
        alloc[order] += 1
    return alloc


def pool_weights(pool_clusters: np.ndarray, slide_clusters: np.ndarray) -> np.ndarray:
    """Each pool patch's share of the slide: (slide patches of its cluster) / (pool patches of it).

    The inverse of its cluster's inclusion rate (a Horvitz-Thompson weight), so a weighted mean over
    the pool estimates the same mean over the whole slide whatever the pool's allocation.
    """
    pool_clusters = np.asarray(pool_clusters, dtype=np.int64)
    in_slide = np.bincount(np.asarray(slide_clusters, dtype=np.int64))  # the pool is a subset of the slide
    in_pool = np.bincount(pool_clusters, minlength=len(in_slide))
    return in_slide[pool_clusters] / np.maximum(in_pool[pool_clusters], 1)
