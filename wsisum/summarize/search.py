"""`sampler=wsisum`: the learned summary — search the pool for the subset whose slide token best
matches the target, in large batches.

The original code meant to score up to 1000 random masks by cos(slide token, fused teacher) and keep
the best, but never re-draws the mask inside its loop: its "best" summary is one random subset, at
one forward per iteration. Here candidates are really drawn, scored many per forward under
`torch.inference_mode` (bf16 on GPU), the search stops once the best score stalls, and swap moves
refine the winner. `target="self"` scores against the model's own slide token on the whole pool,
so new slides need no slide foundation models; `faithful=True` reproduces the original (one mask).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsisum.errors import InputError
from wsisum.sampling.allocation import pool_weights
from wsisum.sampling.base import Sampler, Selection
from wsisum.sampling.cohort_rarity import Codebook, cohort_codebook
from wsisum.sampling.facility import cosine_matrix
from wsisum.sampling.pool import PoolTransform, grid_positions
from wsisum.sampling.stratified import quota_size
from wsisum.seeding import rng_for
from wsisum.summarize.scorer import (
    CandidateScorer,
    check_dims,
    checkpoint_teachers,
    load_summarizer,
    resolve_device,
    search,
)
from wsisum.summarize.selection import SummaryObjective, guided_search

SELECTIONS = ("guided", "random")
COVERAGE_WEIGHTINGS = ("slide", "pool")  # slide: each pool patch weighted by its share of the slide
RARITIES = ("cohort", "slide")  # cohort: isolation weighted by visual-word idf over the cohort (cohort_rarity.py)


def model_scores(faithful: bool, selection: str, teacher_weight: float) -> bool:
    """The model scores candidates only for the slide-level term, random search or the original's mask."""
    return bool(faithful) or selection != "guided" or float(teacher_weight) != 0.0


def check_options(
    ckpt_path: str | None, needs_model: bool, target: str, selection: str, coverage_weighting: str, rarity: str
) -> None:
    """One line naming the option for a choice the sampler does not know, before any slide is read."""
    if ckpt_path is None and needs_model:
        raise InputError(
            None, "sampler=wsisum needs ckpt_path=<a wsisum-train checkpoint> (e.g. .../checkpoints/last.ckpt)"
        )
    if target not in ("teacher", "self"):
        raise InputError(None, f"sampler.target must be 'teacher' or 'self', got {target!r}")
    if selection not in SELECTIONS:
        raise InputError(None, f"sampler.selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if coverage_weighting not in COVERAGE_WEIGHTINGS:
        raise InputError(
            None,
            f"sampler.coverage_weighting must be one of {', '.join(COVERAGE_WEIGHTINGS)}, got {coverage_weighting!r}",
        )
    if rarity not in RARITIES:
        raise InputError(None, f"sampler.rarity must be one of {', '.join(RARITIES)}, got {rarity!r}")


def check_numbers(composition_patches: int, quota_max: int | None, rare_quota: float, summary_quota: float) -> None:
    """One line naming the option for a count or share out of range."""
    if int(composition_patches) < 0:
        raise InputError(None, f"sampler.composition_patches must be >= 0, got {composition_patches}")
    if quota_max is not None and int(quota_max) < 0:
        raise InputError(None, f"sampler.quota_max must be >= 0 or null, got {quota_max}")
    for key, value in (("rare_quota", rare_quota), ("summary_quota", summary_quota)):
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(None, f"sampler.{key} must be in [0, 1], got {value}")


class WSISumSampler(Sampler):
    """The learned summarizer as a sampler: a rare-aware k-means pool from the full bag, then the
    selection of `wsisum.summarize.selection` (default) or the random search of `wsisum.summarize.scorer`."""

    name = "wsisum_search"  # as its config (sampler=wsisum_search); the pipeline runs it as wsisum-search
    DRAW_KEY = "wsisum"  # keys the draws of every variant (`rng`); its name before the default moved on

    def __init__(
        self,
        ckpt_path: str | None = None,
        seed: int = 0,
        pool_size: int = 500,
        n_clusters: int = 50,
        target: str = "teacher",
        selection: str = "guided",
        allocation_power: float = 0.5,
        min_per_cluster: int = 1,
        rare_quota: float = 0.2,
        summary_quota: float = 0.25,
        composition_patches: int = 4,
        quota_max: int | None = 8,
        coverage_weighting: str = "pool",
        rarity: str = "cohort",
        codebook_words: int = 128,
        codebook_per_slide: int = 400,
        teacher_weight: float = 0.0,
        coverage_weight: float = 1.0,
        n_random: int = 7,
        n_candidates: int = 1024,
        batch_size: int = 256,
        patience: int | None = 3,
        min_delta: float = 1e-4,
        refine_rounds: int = 2,
        refine_batch: int = 8,
        faithful: bool = False,
        device: str = "auto",
    ):
        super().__init__(seed)
        self.needs_model = model_scores(faithful, selection, teacher_weight)
        check_options(ckpt_path, self.needs_model, target, selection, coverage_weighting, rarity)
        check_numbers(composition_patches, quota_max, rare_quota, summary_quota)
        self.ckpt_path = None if ckpt_path is None else str(ckpt_path)
        self.teacher_names = checkpoint_teachers(ckpt_path) if ckpt_path is not None else []  # a bad path fails now
        self.pool_size, self.n_clusters, self.target = int(pool_size), int(n_clusters), target
        self.selection, self.summary_quota = selection, float(summary_quota)
        self.composition_patches, self.coverage_weighting = int(composition_patches), coverage_weighting
        self.quota_max = None if quota_max is None else int(quota_max)
        self.teacher_weight, self.coverage_weight, self.n_random = (
            float(teacher_weight),
            float(coverage_weight),
            int(n_random),
        )
        self.pool = dict(
            allocation_power=float(allocation_power), min_per_cluster=int(min_per_cluster), rare_quota=float(rare_quota)
        )
        self.n_candidates, self.batch_size, self.patience = int(n_candidates), int(batch_size), patience
        self.min_delta, self.refine_rounds, self.refine_batch = float(min_delta), int(refine_rounds), int(refine_batch)
        self.faithful, self.device = bool(faithful), device
        self.rarity, self.codebook_words, self.codebook_per_slide = rarity, int(codebook_words), int(codebook_per_slide)
        self.codebooks: dict[str, Codebook] = {}  # dataset -> visual words, fitted by `prepare`
        self.needs_teachers = target == "teacher" and self.needs_model

    @classmethod
    def loads_model(cls, options: Any) -> bool:
        return model_scores(
            options.get("faithful", False), options.get("selection", "guided"), options.get("teacher_weight", 0.0)
        )

    def rng(self, slide_id: str) -> np.random.Generator:
        """The same stream for every variant (keyed `DRAW_KEY`, not the name): an ablation then differs
        from the search summary only by its switch, not also by its random candidates and swaps."""
        return rng_for(self.seed, slide_id, self.DRAW_KEY)

    def prepare(self, cohort: Any, cache_dir: str | Path | None = None) -> None:
        """`rarity=cohort`: one visual-word codebook per dataset of the cohort (cached in `cache_dir`)."""
        if self.rarity != "cohort":
            return
        for dataset in cohort.datasets:
            bags = [(sid, rec.bag_path) for sid, rec in cohort.slides.items() if rec.dataset == dataset]
            self.codebooks[dataset] = cohort_codebook(
                dataset, bags, cache_dir, self.codebook_words, self.codebook_per_slide, self.seed
            )

    def build_pool(
        self, slide_id: str, features: np.ndarray, budget: int, dataset: str | None = None, source: str = ""
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pool indices into the bag, sorted; pool positions of the summary's rare quota; each pool
        patch's coverage weight). A slide outside every prepared cohort gets per-slide rarity only."""
        transform = PoolTransform(
            max(self.pool_size, budget), self.n_clusters, self.seed, **self.pool, store=self.clusters
        )
        book = self.codebooks.get(dataset) if dataset is not None else None
        idf = book.patch_idf(features) if book is not None else None
        pool = transform.pool_indices(slide_id, features, source, idf=idf)
        guided = self.selection == "guided" and not self.faithful
        n_quota = quota_size(budget, self.summary_quota, self.composition_patches, self.quota_max) if guided else 0
        quota = np.zeros(0, dtype=np.int64)
        if n_quota:
            rare = transform.cache.rare_order(
                slide_id, features, source, max(n_quota, transform.rare_count(len(pool))), idf
            )
            pool = np.union1d(pool, rare[:n_quota])  # the pool's own rare share is a prefix of the same order
            quota = np.searchsorted(pool, rare[:n_quota])
        weights = np.ones(len(pool))
        if guided and self.coverage_weighting == "slide" and len(pool) < features.shape[0]:
            assign = transform.cache.assignments(slide_id, features, source)
            weights = pool_weights(assign[pool], assign)
        return pool, quota, weights

    def candidate_scorer(self, features, pool, feats, coords, context) -> CandidateScorer:
        """The pretrained student scoring subsets of this slide's pool against its target."""
        device = resolve_device(self.device)
        assert self.ckpt_path is not None
        module = load_summarizer(self.ckpt_path, device)
        check_dims(module, features, context.get("teachers") or {}, context.get("teacher_paths") or {}, self.ckpt_path)
        c = torch.from_numpy(np.asarray(coords[pool])) if coords is not None else torch.full((len(pool), 2), -1)
        scorer = CandidateScorer(module, feats, grid_positions(c), device)
        if self.needs_teachers:
            teachers = context.get("teachers") or {}
            if not any(teachers.get(t) is not None for t in module.teacher_names):
                raise InputError(
                    None, f"no embedding of teachers {module.teacher_names} for this slide; use sampler.target=self"
                )
            scorer.set_teacher_target(teachers)
        elif self.target == "self":
            scorer.set_self_target()
        return scorer

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        t0 = time.perf_counter()
        source = context.get("source") or ""
        pool, quota, weights = self.build_pool(slide_id, features, budget, context.get("dataset"), source)
        feats = torch.from_numpy(np.asarray(features[pool], dtype=np.float32))
        # patch level only (the default): no model, no forward
        scorer = self.candidate_scorer(features, pool, feats, coords, context) if self.needs_model else None
        if self.faithful:  # the original: one random mask, no search
            res = search(scorer, len(pool), budget, rng, n_candidates=1, batch_size=1, patience=None, refine_rounds=0)
        elif self.selection == "random":
            res = search(
                scorer,
                len(pool),
                budget,
                rng,
                self.n_candidates,
                self.batch_size,
                self.patience,
                self.min_delta,
                self.refine_rounds,
                self.refine_batch,
            )
        else:
            sim = cosine_matrix(feats.numpy())
            objective = SummaryObjective(sim, scorer, self.teacher_weight, self.coverage_weight, weights)
            res = guided_search(
                objective, sim, budget, quota, rng, self.n_random, self.refine_rounds, self.refine_batch
            )
        attrs = {
            "first_score": res["first_score"],
            "n_scored": res["n_scored"],
            "pool_size": len(pool),
            "n_quota": res.get("n_quota", 0),
            "search_seconds": time.perf_counter() - t0,
        }
        if res.get("random_best_score") is not None:
            attrs["random_best_score"] = res["random_best_score"]
        return Selection(pool[res["indices"]], score=res["score"], attrs=attrs)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "target": self.target,
            "faithful": self.faithful,
            "checkpoint": Path(self.ckpt_path).name if self.ckpt_path else None,
            "pool_size_config": self.pool_size,
            "selection": self.selection,
            "summary_quota": self.summary_quota,
            "composition_patches": self.composition_patches,
            "quota_max": -1 if self.quota_max is None else self.quota_max,
            "coverage_weighting": self.coverage_weighting,
            "rarity": self.rarity,
            "codebook_words": self.codebook_words,
            "codebook_per_slide": self.codebook_per_slide,
            "teacher_weight": self.teacher_weight,
            "coverage_weight": self.coverage_weight,
            "n_random": self.n_random,
            "n_candidates": self.n_candidates,
            **self.pool,
        }
