"""WSISum's summary selection with both levels of the method in its objective.

score(S) = teacher_weight * cos(student slide outputs on S, teacher target)          (slide level)
         + coverage_weight * sum_p w_p max_{s in S} cos(x_p, x_s) / sum_p w_p            (patch level)

The weights w_p undo the pool's stratification (`pool_weights`): a rare-aware pool over-draws small
clusters so that they can be searched, and unweighted coverage would then ask for them as if they
were a large part of the slide, which at 16 patches costs the dominant (label-carrying) morphologies.

The slide-level term alone cannot ask for a 3-patch lesion (the slide embedding barely moves), and
the original's random search scores a vanishing share of C(500, K). Here:

1. a rare-morphology quota (the slide's most isolated patches, `sampling/rare.py`) is fixed first;
2. the rest starts from a facility-location greedy (the patch-level term, no model forward;
   `sampling/facility.py`, the mechanism the `facility` sampler runs on whole slides);
3. that start competes with `n_random` random candidates (holding the same quota), all scored in one
   batch: the result can never score below the best random candidate it started from;
4. swap moves on the non-quota members are scored in batches and kept only when they raise the score.

Deterministic for (seed, slide_id): every draw comes from the sampler's seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsisum.sampling.facility import facility_location_greedy

TeacherScore = Callable[[torch.Tensor], torch.Tensor]  # (B, K) pool positions -> (B,) teacher cosine


class SummaryObjective:
    """Scores batches of candidate subsets (pool positions) by the weighted sum of both levels."""

    def __init__(
        self,
        similarity: np.ndarray,
        teacher: TeacherScore | None,
        teacher_weight: float = 1.0,
        coverage_weight: float = 1.0,
        weights: np.ndarray | None = None,
    ):
        self.sim = torch.from_numpy(np.ascontiguousarray(similarity, dtype=np.float32))
        w = np.ones(self.sim.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = torch.from_numpy((w / w.sum()).astype(np.float32))
        self.teacher = teacher if teacher_weight else None
        self.teacher_weight, self.coverage_weight = float(teacher_weight), float(coverage_weight)
        self.n_scored = 0

    def coverage(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, K) -> (B,) weighted mean over pool patches of their best cosine to the subset."""
        return self.weights @ self.sim[:, idx].amax(-1)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
        score = torch.zeros(t.shape[0])
        if self.coverage_weight:
            score += self.coverage_weight * self.coverage(t)
        if self.teacher is not None:
            score += self.teacher_weight * self.teacher(t).float()
        self.n_scored += t.shape[0]
        return score.numpy().astype(np.float64)


def random_completions(rng: np.random.Generator, n: int, pool: int, fixed: np.ndarray, k: int) -> np.ndarray:
    """n random k-subsets of range(pool) that all contain `fixed`."""
    free = np.setdiff1d(np.arange(pool), fixed)
    rest = free[np.argsort(rng.random((n, len(free))), axis=1, kind="stable")[:, : k - len(fixed)]]
    return np.concatenate([np.broadcast_to(fixed, (n, len(fixed))), rest], axis=1)


def swap_proposals(
    rng: np.random.Generator, members: np.ndarray, n_fixed: int, pool: int, n: int, max_swap: int
) -> np.ndarray:
    """n copies of `members` with 1..max_swap of its non-fixed entries replaced by outside patches."""
    k = len(members)
    outside = np.setdiff1d(np.arange(pool), members)
    props = np.repeat(members[None], n, axis=0)
    movable = k - n_fixed
    if movable <= 0 or len(outside) == 0:
        return props
    n_swap = rng.integers(1, min(max_swap, movable, len(outside)) + 1, size=n)
    for r in range(n):
        out_pos = n_fixed + rng.choice(movable, n_swap[r], replace=False)
        props[r, out_pos] = rng.choice(outside, n_swap[r], replace=False)
    return props


def refine_by_swaps(
    score: Callable[[np.ndarray], np.ndarray],
    members: np.ndarray,
    best: float,
    rng: np.random.Generator,
    pool: int,
    n_fixed: int,
    rounds: int,
    batch: int,
    max_swap: int,
) -> tuple[np.ndarray, float]:
    """Swap-move refinement shared by both searches: each round scores `batch` proposals of 1..max_swap
    swaps (the first `n_fixed` members stay) and keeps the best only when it raises the score."""
    for _ in range(rounds if len(members) < pool else 0):
        props = swap_proposals(rng, members, n_fixed, pool, batch, max_swap)
        scores = score(props)
        i = int(np.argmax(scores))
        if scores[i] > best:
            best, members = float(scores[i]), props[i].copy()
    return members, best


def guided_search(
    objective: SummaryObjective,
    similarity: np.ndarray,
    k: int,
    quota: np.ndarray,
    rng: np.random.Generator,
    n_random: int = 15,
    refine_rounds: int = 4,
    refine_batch: int = 16,
    max_swap: int | None = None,
) -> dict[str, Any]:
    """Quota + facility-location start, against `n_random` random candidates, then swap refinement."""
    pool = similarity.shape[0]
    quota = np.asarray(quota, dtype=np.int64)[:k]
    start = facility_location_greedy(similarity, k - len(quota), quota, objective.weights.numpy())
    cands = (
        np.concatenate([start[None], random_completions(rng, n_random, pool, quota, k)]) if n_random else start[None]
    )
    scores = objective(cands)
    j = int(np.argmax(scores))
    members, best = cands[j].copy(), float(scores[j])
    random_best = float(scores[1:].max()) if n_random else None
    max_swap = max(1, k // 16) if max_swap is None else int(max_swap)
    members, best = refine_by_swaps(
        objective, members, best, rng, pool, len(quota), refine_rounds, refine_batch, max_swap
    )
    return {
        "indices": np.sort(members),
        "score": best,
        "first_score": float(scores[0]),
        "random_best_score": random_best,
        "n_random": n_random,
        "n_scored": objective.n_scored,
        "n_quota": len(quota),
    }
