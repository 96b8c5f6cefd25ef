"""Leave-one-out slide search over an index: set distances, the case rule, ranked neighbours.

Two set distances between a query slide Q and a target slide T (features L2-normalised, so an
inner product is a cosine):

- `median_min` (Yottixel): for each patch q of Q, d(q, T) = min over t in T of (1 - cos(q, t));
  the distance is the median of d(q, T) over the patches of Q. It is asymmetric (Q's patches look
  for their best match in T). Cost per (Q, T) pair is O(N_Q * N_T * D) time and, through faiss'
  blocked exact search (inner product, k = 1), O(N_Q) memory beyond the two slides; one query
  against S targets costs O(N_Q * sum N_T * D). On full bags the index's `max_patches` cap
  (a seeded subsample) is what keeps 100k-patch slides tractable.
- `mean_cosine`: 1 - cos(mean of Q, mean of T), the means taken over all of a slide's patches.

A query never retrieves itself nor any slide of its own case (leave-one-case-out; with no case_id
in the labels every slide is its own case, i.e. leave-one-slide-out). Neighbours are ranked by
distance, nearest first; equal distances keep index order (stable sort), so results are
deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from wsisum.retrieve.index import RetrievalIndex

DISTANCES = ("median_min", "mean_cosine")


def min_distances(query: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For each (unit-norm) query row, 1 - its highest cosine to any target row (exact, via faiss)."""
    sims, _ = faiss.knn(
        np.ascontiguousarray(query, dtype=np.float32),
        np.ascontiguousarray(target, dtype=np.float32),
        1,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return np.clip(1.0 - sims[:, 0].astype(np.float64), 0.0, 2.0)


def median_of_min(query: np.ndarray, target: np.ndarray) -> float:
    """Yottixel's set distance: the median over the query's patches of their min cosine distance."""
    return float(np.median(min_distances(query, target)))


def distance_row(index: RetrievalIndex, distance: str, q: int, targets: np.ndarray) -> np.ndarray:
    """Distances from slide `q` of the index to each of `targets` (index positions)."""
    if distance == "median_min":
        query = index.patches(q)
        return np.array([median_of_min(query, index.patches(int(t))) for t in targets], dtype=np.float64)
    if distance == "mean_cosine":
        return np.clip(1.0 - index.means[targets].astype(np.float64) @ index.means[q].astype(np.float64), 0.0, 2.0)
    raise ValueError(f"unknown distance {distance!r} (known: {list(DISTANCES)})")


@dataclass
class SearchResult:
    """Per query: up to k neighbours (positions into `slides`, -1 padded), their distances, the time."""

    distance: str
    slides: list[int]  # index positions of the searched slides (queries and targets alike)
    neighbours: np.ndarray  # (Q, k) int, positions into `slides`; -1 where fewer were allowed
    distances: np.ndarray  # (Q, k) float, NaN where padded
    query_time_s: np.ndarray  # (Q,) seconds to compute and rank one query's distances


def allowed_targets(cases: Sequence[str]) -> np.ndarray:
    """(Q, Q) bool: True where target j may answer query i (another case; never itself)."""
    c = np.asarray(cases, dtype=object)
    return c[:, None] != c[None, :]


def search(index: RetrievalIndex, slides: Sequence[int], cases: Sequence[str], distance: str, k: int) -> SearchResult:
    """Leave-one-case-out search of each of `slides` (index positions) among the others."""
    slides = [int(s) for s in slides]
    pos = np.asarray(slides, dtype=np.int64)
    allowed = allowed_targets(cases)
    n = len(slides)
    neighbours = np.full((n, k), -1, dtype=np.int64)
    dists = np.full((n, k), np.nan)
    times = np.zeros(n)
    for i in range(n):
        t0 = time.perf_counter()
        cand = np.flatnonzero(allowed[i])
        d = distance_row(index, distance, slides[i], pos[cand])
        order = np.argsort(d, kind="stable")[:k]
        times[i] = time.perf_counter() - t0
        neighbours[i, : len(order)] = cand[order]
        dists[i, : len(order)] = d[order]
    return SearchResult(distance, slides, neighbours, dists, times)
