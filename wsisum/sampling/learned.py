"""`sampler=wsisum`, the default summary: where the cohort has slide embeddings, its non-quota patches
chosen by a teacher-trained selector, read off a slide in one pass over its patches; without them,
the proportional composition of `stratified` (learned_share=0 gives that everywhere).

The selector is a per-patch score (gated attention, `teacher_attention`) fitted on the cohort so that
the mean of each slide's `select_size` best-scored patches predicts the slide foundation models'
fused embedding (a straight-through relaxed top-k, `relaxed_topk`; the best of `restarts` starts).
Where a label lives in a subtle shift of a morphology every slide has, the teachers see it and the
subset that predicts them is made of the patches that carry it; neither coverage nor rarity can
see that. No label is used, and no slide embedding is needed at summary time: a new slide is scored
by the fitted parameters in numpy, O(N x D x 64).

A summary: the quota of isolated, teacher-relevant patches (`stratified`), then `learned_share` of
the remaining patches as a diverse top-K of the scores (score-weighted facility location among the
`candidate_factor` x K best-scored patches: the region the selector ranks first, without K
near-duplicates), then the proportional composition for the rest. A dataset without slide
embeddings (or a slide summarized without `prepare`, as `wsisum.summarize_slide` does) has no
selector: its summaries are the composition summary's. torch is imported by the fit only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.errors import InputError
from wsisum.sampling.facility import cosine_matrix, facility_location_greedy
from wsisum.sampling.stratified import StratifiedSummarySampler
from wsisum.sampling.teacher_attention import attention_scores, fit_attention

log = logging.getLogger(__name__)


def diverse_top(features: np.ndarray, scores: np.ndarray, free: np.ndarray, count: int, factor: int) -> np.ndarray:
    """`count` of the free patches: facility location (cosine) among the `factor` x count best-scored
    ones, each weighted by its selection weight (softmax of the scores over them), so the picks cover
    what the selector ranks first rather than the candidates' spread. Ties in score go to the lower
    position, so the result depends on the scores alone."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    members = np.flatnonzero(free)
    top = np.sort(members[np.lexsort((members, -scores[members]))][: max(int(factor), 1) * count])
    if len(top) <= count:
        return top.astype(np.int64)
    weight = np.exp(scores[top] - scores[top].max())
    picked = facility_location_greedy(cosine_matrix(features[top]), count, np.zeros(0, dtype=np.int64), weight)
    return top[picked].astype(np.int64)


class LearnedSummarySampler(StratifiedSummarySampler):
    """The default summary, `learned_share` of its non-quota patches from the teacher-trained selector."""

    name = "wsisum"

    def __init__(
        self,
        learned_share: float = 1.0,
        candidate_factor: int = 4,
        select_size: int = 16,
        restarts: int = 4,
        **stratified: Any,
    ):
        super().__init__(**stratified)
        for key, value, low in (("candidate_factor", candidate_factor, 1), ("select_size", select_size, 1)):
            if int(value) < low:
                raise InputError(None, f"sampler.{key} must be >= {low}, got {value}")
        if not 0.0 <= float(learned_share) <= 1.0:
            raise InputError(None, f"sampler.learned_share must be in [0, 1], got {learned_share}")
        self.learned_share, self.candidate_factor = float(learned_share), int(candidate_factor)
        self.select_size, self.restarts = int(select_size), max(1, int(restarts))
        self.selectors: dict[str, dict[str, np.ndarray]] = {}  # dataset -> fitted selector

    def prepare_dataset(self, dataset: str, bags: list, embeddings, cache_dir: str | Path | None) -> None:
        """The composition summary's cohort state, then the dataset's selector where it has slide
        embeddings (none is fitted when `learned_share` is 0: it would pick nothing)."""
        super().prepare_dataset(dataset, bags, embeddings, cache_dir)
        if self.learned_share <= 0:
            return
        params = fit_attention(
            bags,
            embeddings,
            cache_dir,
            self.codebook_per_slide,
            self.seed,
            select=self.select_size,
            restarts=self.restarts,
        )
        if params is None:
            log.warning("dataset %s: no slide embeddings to fit a selector on; its summaries are wsisum's", dataset)
        else:
            self.selectors[dataset] = params

    def preferred(self, features, fixed: np.ndarray, rest: int, slide_id: str, context: dict) -> np.ndarray:
        """round(learned_share x rest) patches: the diverse top of the selector's scores."""
        params = self.selectors.get(context.get("dataset") or "")
        count = round(self.learned_share * rest)
        if params is None or count <= 0:
            return np.zeros(0, dtype=np.int64)
        free = np.ones(features.shape[0], dtype=bool)
        free[fixed] = False
        return diverse_top(features, attention_scores(features, params), free, count, self.candidate_factor)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "learned_share": self.learned_share,
            "candidate_factor": self.candidate_factor,
            "select_size": self.select_size,
            "restarts": self.restarts,
        }
