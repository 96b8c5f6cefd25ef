"""The sampler interface: a bag and a budget K in, K distinct patch indices out, seeded per slide.

`budget=AUTO` asks a sampler that defines its own summary size (`auto_size = True`: Yottixel's
mosaic, SDM, SPLICE) for that size; its `_select` then gets `budget=None`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.errors import InputError
from wsisum.sampling.cluster_cache import ClusterStore
from wsisum.seeding import rng_for

AUTO = "auto"  # the budget of a sampler that sizes its own summary


@dataclass
class Selection:
    """Indices into the source bag (sorted, distinct), an optional per-patch score, and attrs to save."""

    indices: np.ndarray
    scores: np.ndarray | None = None
    score: float | None = None  # one number for the whole summary, where the sampler has one
    attrs: dict[str, Any] = field(default_factory=dict)


class Sampler(ABC):
    """Subclasses implement `_select` for N > K; the base handles N <= K, seeding and checks."""

    name: str = "sampler"
    needs_teachers: bool = False  # the summarize stage then passes teachers=... in the context
    auto_size: bool = False  # defines its own summary size: accepts budget=AUTO

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.clusters = ClusterStore()  # k-means per slide; the summarize stage points it at the study's cache

    def named(self, name: str | None) -> Sampler:
        """This sampler under `name` in its summaries and metrics (`sampler_name`; None keeps its own):
        an ablation variant such as wsisum-noquota is a sampler of its own for the report. The name
        also keys the sampler's random draws (`rng`), unless the sampler fixes that key."""
        if name:
            self.name = str(name)
        return self

    def use_clusters(self, store: ClusterStore) -> None:
        """Share one clustering per slide with every stage and sampler of the study (`cluster_cache`)."""
        self.clusters = store

    @classmethod
    def loads_model(cls, options: Any) -> bool:
        """Whether a sampler built from `options` (its config) scores with a pretrained summarizer, so
        that a study pretrains only for the summaries that need it. None of the model-free ones does."""
        return False

    def rng(self, slide_id: str) -> np.random.Generator:
        return rng_for(self.seed, slide_id, self.name)

    def prepare(self, cohort: Any, cache_dir: str | Path | None = None) -> None:
        """Cohort-level state fitted before the first slide (e.g. `wsisum`'s codebook); most need none."""
        return None

    def check_budget(self, budget: int | str) -> int | str:
        """The budget as this sampler takes it: a positive int, or AUTO where it sizes its own summary."""
        if budget == AUTO:
            if not self.auto_size:
                raise InputError(
                    None,
                    f"budget=auto needs a sampler that sets its own size (mosaic, sdm, splice); "
                    f"sampler={self.name} needs budget=K",
                )
            return AUTO
        budget = int(budget)
        if budget < 1:
            raise InputError(None, f"budget must be a positive integer, got {budget}")
        return budget

    def select(
        self,
        features: np.ndarray,
        budget: int | str,
        *,
        slide_id: str,
        coords: np.ndarray | None = None,
        **context: Any,
    ) -> Selection:
        """Return min(budget, N) distinct indices into `features` (all N, flagged, when N <= budget);
        with budget=AUTO, the sampler's own number of them (at least one).

        `context` carries what some samplers need beyond the bag (e.g. `teachers` for `wsisum`, and
        `source`, the bag's file, which keys the shared clustering cache).
        """
        budget = self.check_budget(budget)
        n = int(features.shape[0])
        if budget == AUTO:
            return self._checked(features, None, n, coords, slide_id, context)
        if n <= budget:
            sel = Selection(np.arange(n, dtype=np.int64))
            sel.attrs["all_patches"] = True
            return sel
        return self._checked(features, budget, n, coords, slide_id, context)

    def _checked(self, features, budget: int | None, n: int, coords, slide_id: str, context: dict) -> Selection:
        """Run `_select` and check its answer: `budget` (or, for None, 1..N) distinct valid indices, sorted."""
        if n == 0:
            return Selection(np.zeros(0, dtype=np.int64), attrs={"all_patches": True})
        sel = self._select(np.asarray(features), budget, self.rng(slide_id), coords, slide_id, **context)
        idx = np.asarray(sel.indices, dtype=np.int64).reshape(-1)
        size = len(idx) if budget is None and 1 <= len(idx) <= n else budget
        if idx.shape != (size,) or len(np.unique(idx)) != size or idx.min() < 0 or idx.max() >= n:
            raise RuntimeError(f"{self.name} sampler returned an invalid selection for {slide_id}")  # a bug, not input
        order = np.argsort(idx, kind="stable")
        sel.indices = idx[order]
        if sel.scores is not None:
            sel.scores = np.asarray(sel.scores)[order]
        sel.attrs.setdefault("all_patches", len(idx) == n and budget is None)
        return sel

    @abstractmethod
    def _select(
        self,
        features: np.ndarray,
        budget: int | None,
        rng: np.random.Generator,
        coords: np.ndarray | None,
        slide_id: str,
        **context: Any,
    ) -> Selection: ...

    def describe(self) -> dict[str, Any]:
        """The sampler's settings, stored in every summary bag's attrs."""
        return {"sampler": self.name, "seed": self.seed}

    def recipe(self, budget: int | str) -> dict[str, Any]:
        """Everything a summary is made from: the settings plus the budget (compared on re-runs)."""
        return self.describe() | {"budget": AUTO if budget == AUTO else int(budget)}
