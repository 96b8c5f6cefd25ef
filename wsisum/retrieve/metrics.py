"""Retrieval metrics of a leave-one-out search, as the tidy values of `wsisum-evaluate`'s metrics.csv.

For a query with true label y and neighbours r_1, r_2, ... (nearest first, own case excluded):

- `test_majority_vote_at_k` (k = 1, 3, 5): accuracy of the majority label of r_1..r_k. A tie
  between labels goes to the tied label whose best-ranked neighbour is nearest (so @1 is the
  nearest neighbour's label, and a 1-1-1 split at @3 also follows the nearest).
- `test_f1_macro_at_5`: macro F1 of the @5 votes over the queries; classes are those present in the
  true labels or the votes (sklearn's default), and each class's F1 is 2TP / (2TP + FP + FN).
- `test_map_at_5`: mean over queries of AP@5 = (1 / min(5, R)) * sum_{i<=5} P(i) * rel_i, where
  rel_i = 1 if r_i has label y, P(i) = (rel_1 + ... + rel_i) / i, and R is the number of slides
  with label y that the query may retrieve (its own case excluded). Queries with R = 0 have no
  AP and are left out of the mean. AP@5 = 1 iff the first min(5, R) neighbours are all relevant.
- `query_time_s`: mean seconds per query slide (its distances to every allowed target, ranked).

A query with fewer than k allowed targets votes with the ones it has; one with none is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 3, 5)
F1_K = MAP_K = 5


def majority_vote(ranked_labels: Sequence[int]) -> int:
    """The most frequent label; ties go to the tied label that appears first (nearest)."""
    labels = [int(v) for v in ranked_labels]
    counts: dict[int, int] = {}
    for v in labels:
        counts[v] = counts.get(v, 0) + 1
    best = max(counts.values())
    return next(v for v in labels if counts[v] == best)


def average_precision_at(relevant: Sequence[bool], n_relevant: int, k: int = MAP_K) -> float:
    """AP@k of one ranked list (see the module docstring); NaN when nothing is relevant (R = 0)."""
    rel = np.asarray(list(relevant)[:k], dtype=np.float64)
    denom = min(k, int(n_relevant))
    if denom == 0:
        return float("nan")
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / denom)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Unweighted mean F1 over the classes present in y_true or y_pred."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in np.union1d(t, p):
        tp = np.sum((t == c) & (p == c))
        fp = np.sum((t != c) & (p == c))
        fn = np.sum((t == c) & (p != c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def query_outcomes(
    targets: Sequence[int], neighbour_labels: Sequence[Sequence[int]], n_relevant: Sequence[int]
) -> list[dict]:
    """Per query: its votes at each k and its AP@5 (an empty neighbour list gives an empty dict)."""
    out = []
    for y, ranked, r in zip(targets, neighbour_labels, n_relevant):
        ranked = [int(v) for v in ranked]
        if not ranked:
            out.append({})
            continue
        row: dict = {f"vote_at_{k}": majority_vote(ranked[:k]) for k in KS}
        row["ap_at_5"] = average_precision_at([v == int(y) for v in ranked], r, MAP_K)
        out.append(row)
    return out


def retrieval_values(targets: Sequence[int], outcomes: Sequence[dict], query_times: Sequence[float]) -> dict:
    """The tidy metric values of one search (queries without neighbours left out)."""
    kept = [(int(y), o) for y, o in zip(targets, outcomes) if o]
    y = np.array([t for t, _ in kept], dtype=np.int64)
    values: dict[str, float | int | None] = {}
    for k in KS:
        votes = np.array([o[f"vote_at_{k}"] for _, o in kept], dtype=np.int64)
        values[f"test_majority_vote_at_{k}"] = float(np.mean(votes == y)) if len(y) else float("nan")
    votes = [o[f"vote_at_{F1_K}"] for _, o in kept]
    values[f"test_f1_macro_at_{F1_K}"] = macro_f1(y, votes) if len(y) else float("nan")
    aps = np.array([o["ap_at_5"] for _, o in kept], dtype=np.float64)
    aps = aps[~np.isnan(aps)]
    values[f"test_map_at_{MAP_K}"] = float(aps.mean()) if len(aps) else float("nan")
    values["query_time_s"] = float(np.mean(query_times)) if len(query_times) else None
    values["n_test"] = len(kept)
    return values
