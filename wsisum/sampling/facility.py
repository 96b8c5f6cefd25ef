"""Facility location: choose S maximising sum_p w_p max_{s in S} sim(p, s), greedily.

One greedy serves both users; each step evaluates candidate gains in one matrix product:

- `facility_location_greedy`: a pool's precomputed similarity matrix (hundreds of patches), every
  candidate evaluated at every step (the plain greedy, Nemhauser et al. 1978);
- `slide_facility_location`: a whole slide (up to 100k patches) on cosine similarity. Stochastic
  greedy (Mirzasoleiman et al. 2015, "Lazier than lazy greedy") evaluates only a random
  (n / k) log(1 / eps) candidates per step, a (1 - 1/e - eps) approximation in expectation.
  Lazy greedy was measured and rejected here: each new centre raises every patch's best cosine a
  little (unrelated patches are not orthogonal), so every stale bound fails and lazy evaluates
  almost all candidates at every step (27 s on 20k x 128).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Columns = Callable[[np.ndarray], np.ndarray]  # candidate indices (b,) -> (covered patches, b) similarities


def greedy_facility_location(
    columns: Columns,
    n: int,
    k: int,
    fixed: Sequence[int] = (),
    weights: np.ndarray | None = None,
    sample: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`fixed` plus up to k greedy additions among n candidates, each with the largest gain.

    `sample` candidates drawn by `rng` are evaluated per step (None: all of them, which is the
    plain greedy). Ties go to the lower index.
    """
    chosen = [int(i) for i in fixed]
    first = columns(np.asarray(chosen if chosen else [0], dtype=np.int64))
    cur = first.max(1) if chosen else np.full(first.shape[0], -1.0, dtype=np.float32)
    w = np.ones(first.shape[0], dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    taken = np.zeros(n, dtype=bool)
    taken[chosen] = True
    everything = np.arange(n)
    for _ in range(min(int(k), n - len(chosen))):
        if sample is None:
            cand = everything  # all columns at once, masked afterwards
        else:
            free = np.flatnonzero(~taken)
            cand = free if sample >= len(free) else np.sort(rng.choice(free, int(sample), replace=False))
        gain = w @ np.maximum(columns(cand) - cur[:, None], 0.0)
        gain[taken[cand]] = -np.inf
        best = int(cand[np.argmax(gain)])
        chosen.append(best)
        taken[best] = True
        cur = np.maximum(cur, columns(np.array([best]))[:, 0])
    return np.asarray(chosen, dtype=np.int64)


def facility_location_greedy(
    similarity: np.ndarray, k: int, fixed: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """`fixed` plus k greedy additions on a pool's (P, P) similarity, weights w_p on the covered side.

    Plain greedy: at pool sizes one product per step costs microseconds.
    """
    sim = np.asarray(similarity, dtype=np.float32)
    return greedy_facility_location(lambda idx: sim[:, idx], sim.shape[0], k, fixed, weights)


def unit_rows(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """(P, P) cosine similarity between the rows of `features`."""
    x = unit_rows(features)
    return x @ x.T


def slide_facility_location(
    features: np.ndarray, k: int, rng: np.random.Generator, epsilon: float = 0.01, max_pool: int = 4096
) -> tuple[np.ndarray, float]:
    """k patches of a slide by stochastic greedy on the summed best cosine similarity.

    Beyond `max_pool` patches both the candidates and the covered patches are a seeded uniform
    subsample (the objective then an unbiased estimate of the slide-wide sum), so memory and time
    stay bounded: one (max_pool, max_pool) similarity matrix. `epsilon` = 0 is the plain greedy.
    Returns indices into `features` and the mean best cosine over the covered patches.
    """
    n = features.shape[0]
    pool = np.arange(n) if n <= max_pool else np.sort(rng.choice(n, int(max_pool), replace=False))
    sim = cosine_matrix(features[pool])
    m = len(pool)
    sample = None if epsilon <= 0 else max(1, int(np.ceil(m / max(k, 1) * np.log(1.0 / epsilon))))
    # sim is symmetric: gathering rows (contiguous) and transposing the view is 2x faster than columns
    picked = greedy_facility_location(lambda idx: sim[idx].T, m, k, sample=sample, rng=rng)
    return pool[picked], float(sim[:, picked].max(1).mean())


def coverage(features: np.ndarray, chosen: np.ndarray) -> float:
    """sum_p max_{s in chosen} cos(x_p, x_s): the facility-location objective of a subset, in blocks."""
    x = unit_rows(features)
    s = x[np.asarray(chosen, dtype=np.int64)]
    return float(sum((x[i : i + 65536] @ s.T).max(1).sum() for i in range(0, x.shape[0], 65536)))
