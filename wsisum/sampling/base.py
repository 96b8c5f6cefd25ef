"""The sampler interface: a bag and a budget K in, K distinct patch indices out, seeded per slide."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.errors import InputError
from wsisum.seeding import rng_for


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

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def rng(self, slide_id: str) -> np.random.Generator:
        return rng_for(self.seed, slide_id, self.name)

    def prepare(self, cohort: Any, cache_dir: str | Path | None = None) -> None:
        """Cohort-level state fitted before the first slide (e.g. `wsisum`'s codebook); most need none."""
        return None

    def select(
        self,
        features: np.ndarray,
        budget: int,
        *,
        slide_id: str,
        coords: np.ndarray | None = None,
        **context: Any,
    ) -> Selection:
        """Return min(budget, N) distinct indices into `features` (all N, flagged, when N <= budget).

        `context` carries what some samplers need beyond the bag (e.g. `teachers` for `wsisum`).
        """
        budget = int(budget)
        if budget < 1:
            raise InputError(None, f"budget must be a positive integer, got {budget}")
        n = int(features.shape[0])
        if n <= budget:
            sel = Selection(np.arange(n, dtype=np.int64))
            sel.attrs["all_patches"] = True
            return sel
        sel = self._select(np.asarray(features), budget, self.rng(slide_id), coords, slide_id, **context)
        idx = np.asarray(sel.indices, dtype=np.int64)
        if idx.shape != (budget,) or len(np.unique(idx)) != budget or idx.min() < 0 or idx.max() >= n:
            raise RuntimeError(f"{self.name} sampler returned an invalid selection for {slide_id}")  # a bug, not input
        order = np.argsort(idx, kind="stable")
        sel.indices = idx[order]
        if sel.scores is not None:
            sel.scores = np.asarray(sel.scores)[order]
        sel.attrs.setdefault("all_patches", False)
        return sel

    @abstractmethod
    def _select(
        self,
        features: np.ndarray,
        budget: int,
        rng: np.random.Generator,
        coords: np.ndarray | None,
        slide_id: str,
        **context: Any,
    ) -> Selection: ...

    def describe(self) -> dict[str, Any]:
        """The sampler's settings, stored in every summary bag's attrs."""
        return {"sampler": self.name, "seed": self.seed}

    def recipe(self, budget: int) -> dict[str, Any]:
        """Everything a summary is made from: the settings plus the budget (compared on re-runs)."""
        return self.describe() | {"budget": int(budget)}
