"""The composition summary: the slide's composition in proportion, its rare findings on purpose, the
rest to coverage. numpy and faiss only (no model, no torch import at the default settings), linear
in N. `sampler=wsisum` (`learned`) is this with the composition replaced by a teacher-trained
selector's picks wherever the cohort has slide embeddings; without them, it is this summary.

A summary of K patches is built in three parts, all from the slide's k-means (50 clusters, shared
with every sampler of a study through the cluster cache):

1. **quota**: up to `quota_max` patches (a `summary_quota` share of those beyond the first
   `composition_patches`) that are isolated within the slide (`isolation`) and whose visual word
   the slide foundation models react to across the cohort (`teacher_relevance`; without slide
   embeddings, cohort rarity: visual-word idf, `cohort_rarity`), chosen by weighted farthest-point
   so that two quota patches are not the same finding. What a proportional draw rounds away (an
   ITC-sized lesion), and not what is isolated but says nothing (pen, folds, blur, bubbles).
2. **composition**: `composition_share` of the remaining patches split over the clusters in
   proportion to their sizes (exact Hamilton allocation); within a cluster, facility location on
   its members (the medoid first, then spread). A large, coherent region (a tumour on a fifth of
   the slide) keeps its share: facility location alone gives a tight region one or two centres
   (0.12 tumour share on the real HANCOCK crop with CONCH features against 0.21 on the slide).
   With `teacher_tilt` > 0 and slide embeddings in the cohort, each cluster's share leans that far
   towards its share of a teacher-attention pooling's mass (`teacher_attention`, fitted on the
   cohort; torch for that fit only): where the label is a subtle shift of a morphology every slide
   has, more of the summary goes to the patches that carry it.
3. **coverage**: the rest by facility location on a cluster-proportional pool of the slide, each
   pool patch weighted by its share of the slide, given parts 1 and 2: the morphologies the
   proportional part rounded to zero.

Deterministic for (seed, slide_id).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.embeddings import read_embedding
from wsisum.errors import InputError
from wsisum.sampling.allocation import allocate, pool_weights
from wsisum.sampling.base import Sampler, Selection
from wsisum.sampling.cohort_rarity import Codebook, cohort_codebook
from wsisum.sampling.facility import cosine_matrix, facility_location_greedy
from wsisum.sampling.isolation import candidate_patches, isolation
from wsisum.sampling.rare import rarity_weights, weighted_farthest_points
from wsisum.sampling.samplers import draw_per_stratum
from wsisum.sampling.teacher_attention import attention_scores, fit_attention
from wsisum.sampling.teacher_relevance import fit_relevance

RARITIES = ("teacher", "cohort", "slide")
MAX_CLUSTER_SAMPLE = 256  # members of one cluster searched for its composition picks


def quota_size(budget: int, share: float, composition_patches: int, quota_max: int | None = None) -> int:
    """Summary patches fixed to the slide's most isolated ones: `share` of those beyond the first
    `composition_patches`, at most `quota_max`. At tiny budgets the slide's dominant morphologies
    carry most labels, so rarities only take a share of the patches beyond the composition; and a
    slide holds a handful of rare findings whatever the budget, so past the cap the patches go to
    composition and coverage instead of ever less informative outliers."""
    n = round(share * max(0, int(budget) - int(composition_patches)))
    return n if quota_max is None else min(n, int(quota_max))


def check_settings(composition_share: float, summary_quota: float, quota_max: int | None, rarity: str) -> None:
    """One line naming the option for a value out of range, before any slide is read."""
    for key, value in (("composition_share", composition_share), ("summary_quota", summary_quota)):
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(None, f"sampler.{key} must be in [0, 1], got {value}")
    if quota_max is not None and int(quota_max) < 0:
        raise InputError(None, f"sampler.quota_max must be >= 0 or null, got {quota_max}")
    if rarity not in RARITIES:
        raise InputError(None, f"sampler.rarity must be one of {', '.join(RARITIES)}, got {rarity!r}")


def cluster_picks(features: np.ndarray, members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` members of one cluster by facility location on their cosine similarity (the medoid
    first): representative and spread, unlike a random draw. Large clusters are searched on a seeded
    sample of MAX_CLUSTER_SAMPLE members."""
    if count >= len(members):
        return members
    if len(members) > MAX_CLUSTER_SAMPLE:
        members = np.sort(rng.choice(members, MAX_CLUSTER_SAMPLE, replace=False))
    sim = cosine_matrix(features[members])
    return members[facility_location_greedy(sim, count, np.zeros(0, dtype=np.int64))]


def cohort_embeddings(cohort: Any, dataset: str):
    """slide_id -> {teacher: embedding} of one dataset's slides, each slide read once however many
    fits ask; a missing or unreadable file is left out (that slide then takes no part in the fits;
    summarize reports bad files itself)."""
    teachers = cohort.teachers(dataset)

    @functools.cache
    def embeddings(slide_id: str) -> dict[str, np.ndarray]:
        out = {}
        for t in teachers:
            try:
                out[t] = read_embedding(cohort.embedding_path(slide_id, t))
            except InputError:
                continue
        return out

    return embeddings


class StratifiedSummarySampler(Sampler):
    """The composition summary (module docstring): quota + proportional composition + coverage."""

    name = "wsisum"

    def __init__(
        self,
        seed: int = 0,
        n_clusters: int = 50,
        composition_share: float = 1.0,
        summary_quota: float = 0.25,
        composition_patches: int = 4,
        quota_max: int | None = 8,
        rarity: str = "teacher",
        codebook_words: int = 128,
        codebook_per_slide: int = 400,
        pool_size: int = 512,
        candidates: int = 256,
        reference: int = 2048,
        teacher_tilt: float = 0.0,
    ):
        super().__init__(seed)
        check_settings(composition_share, summary_quota, quota_max, rarity)
        self.n_clusters, self.composition_share = int(n_clusters), float(composition_share)
        self.summary_quota, self.composition_patches = float(summary_quota), int(composition_patches)
        self.quota_max = None if quota_max is None else int(quota_max)
        self.rarity, self.codebook_words, self.codebook_per_slide = rarity, int(codebook_words), int(codebook_per_slide)
        self.pool_size, self.candidates, self.reference = int(pool_size), int(candidates), int(reference)
        self.teacher_tilt = float(teacher_tilt)
        self.attention: dict[str, dict[str, np.ndarray]] = {}  # dataset -> teacher-attention scorer
        self.codebooks: dict[str, Codebook] = {}  # dataset -> visual words, fitted by `prepare`
        self.word_weights: dict[str, np.ndarray] = {}  # dataset -> (E, W) quota weight per word

    def prepare(self, cohort: Any, cache_dir: str | Path | None = None) -> None:
        """Cohort-level state per dataset (`prepare_dataset`), each slide's teacher embeddings read
        once per dataset for every fit that asks for them."""
        for dataset in cohort.datasets:
            bags = [(sid, rec.bag_path) for sid, rec in cohort.slides.items() if rec.dataset == dataset]
            self.prepare_dataset(dataset, bags, cohort_embeddings(cohort, dataset), cache_dir)

    def prepare_dataset(self, dataset: str, bags: list, embeddings, cache_dir: str | Path | None) -> None:
        """One visual-word codebook for the dataset (cached in `cache_dir`) and its words' quota
        weights: teacher relevance (`rarity=teacher`, where the cohort has slide embeddings), else idf;
        with `teacher_tilt`, the teacher attention. Nothing with `rarity=slide`."""
        if self.rarity == "slide":
            return
        book = cohort_codebook(dataset, bags, cache_dir, self.codebook_words, self.codebook_per_slide, self.seed)
        self.codebooks[dataset] = book
        weights = fit_relevance(book, embeddings) if self.rarity == "teacher" else None
        if weights is None:
            weights = book.word_idf()
        if weights is not None:
            self.word_weights[dataset] = weights
        if self.teacher_tilt > 0:
            params = fit_attention(bags, embeddings, cache_dir, self.codebook_per_slide, self.seed)
            if params is not None:
                self.attention[dataset] = params

    def quota(self, features, km, count: int, rng: np.random.Generator, dataset: str | None) -> np.ndarray:
        """`count` isolated, cohort-rare patches, pairwise far apart (weighted farthest-point)."""
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        cand = candidate_patches(km, self.candidates)
        book, per_word = self.codebooks.get(dataset or ""), self.word_weights.get(dataset or "")
        rarity = book.patch_values(features[cand], per_word) if book is not None and per_word is not None else None
        weights = rarity_weights(isolation(features, cand, rng, self.reference), rarity)
        return cand[weighted_farthest_points(features[cand], count, weights)]

    def preferred(self, features, fixed: np.ndarray, rest: int, slide_id: str, context: dict) -> np.ndarray:
        """Patches a subclass puts in the summary before the composition (the learned selector's,
        `sampling.learned`); none here."""
        return np.zeros(0, dtype=np.int64)

    def composition_weights(self, features, km, free: np.ndarray, sizes: np.ndarray, dataset: str | None):
        """Each cluster's share of the composition: its share of the slide, tilted by `teacher_tilt`
        towards its share of the teacher attention (`teacher_attention`); None without a fitted scorer."""
        params = self.attention.get(dataset or "")
        if params is None or self.teacher_tilt <= 0:
            return None
        logits = attention_scores(features, params)
        mass = np.where(free, np.exp(logits - logits.max()), 0.0)
        size_share = sizes / max(int(sizes.sum()), 1)
        attention_share = np.bincount(km.assign, weights=mass, minlength=km.k) / max(mass.sum(), 1e-300)
        return (1.0 - self.teacher_tilt) * size_share + self.teacher_tilt * attention_share

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        km = self.clusters.kmeans(
            features, self.n_clusters, seed=self.seed, slide_id=slide_id, source=context.get("source")
        )
        n = features.shape[0]
        count = quota_size(budget, self.summary_quota, self.composition_patches, self.quota_max)
        fixed = self.quota(features, km, count, rng, context.get("dataset"))
        preferred = self.preferred(features, fixed, budget - len(fixed), slide_id, context)
        fixed = np.concatenate([fixed, preferred]).astype(np.int64)
        free = np.ones(n, dtype=bool)
        free[fixed] = False
        rest = budget - len(fixed)
        n_comp = round(self.composition_share * rest)
        sizes = np.bincount(km.assign[free], minlength=km.k)
        alloc = allocate(
            sizes, n_comp, weights=self.composition_weights(features, km, free, sizes, context.get("dataset"))
        )
        members = np.flatnonzero(free)  # sorted: a cluster's picks map back to positions by searchsorted
        comp = members[
            draw_per_stratum(
                km.assign[members],
                alloc,
                rng,
                pick=lambda at, count: np.searchsorted(members, cluster_picks(features, members[at], count, rng)),
            )
        ]
        chosen = np.concatenate([fixed, comp]).astype(np.int64)
        n_quota, n_comp = len(fixed) - len(preferred), len(chosen) - len(fixed)
        if len(chosen) < budget:  # coverage: facility location on a weighted pool holding the chosen
            free[chosen] = False
            members = np.flatnonzero(free)
            draw = allocate(np.bincount(km.assign[members], minlength=km.k), self.pool_size, min_per_stratum=1)
            pool = np.concatenate([chosen, members[draw_per_stratum(km.assign[members], draw, rng)]])
            weights = pool_weights(km.assign[pool], km.assign)
            picked = facility_location_greedy(
                cosine_matrix(features[pool]), budget - len(chosen), np.arange(len(chosen)), weights
            )
            chosen = pool[picked]
        attrs = {"n_quota": n_quota, "n_composition": n_comp, "n_clusters": km.k}
        if len(preferred):
            attrs["n_preferred"] = len(preferred)
        return Selection(chosen, attrs=attrs)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "n_clusters": self.n_clusters,
            "composition_share": self.composition_share,
            "summary_quota": self.summary_quota,
            "composition_patches": self.composition_patches,
            "quota_max": -1 if self.quota_max is None else self.quota_max,
            "rarity": self.rarity,
            "codebook_words": self.codebook_words,
            "codebook_per_slide": self.codebook_per_slide,
            "pool_size": self.pool_size,
            "candidates": self.candidates,
            "reference": self.reference,
            "teacher_tilt": self.teacher_tilt,
        }
