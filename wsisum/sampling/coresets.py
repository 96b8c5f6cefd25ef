"""Coreset samplers: k-center (covers the slide's extremes) and facility location (covers its mass).

Both are standard coreset selections that users compare summaries against; both are seeded from
(seed, slide_id) through the sampler's generator and run on any D and N up to 100k patches.
"""

from __future__ import annotations

from wsisum.sampling.base import Sampler, Selection
from wsisum.sampling.facility import slide_facility_location
from wsisum.sampling.rare import weighted_farthest_points


class KCenterSampler(Sampler):
    """Greedy k-center (Gonzalez 1985): each next patch is the one farthest from those chosen.

    A 2-approximation of the smallest covering radius, so it covers outliers first (a single odd
    patch is always among the first picks). Departs from the reference only in its start: a seeded
    random patch instead of an arbitrary one. Euclidean on the features; the greedy is
    `rare.weighted_farthest_points` without weights (the rare-morphology quota's mechanism).
    """

    name = "kcenter"

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        first = int(rng.integers(features.shape[0]))
        return Selection(weighted_farthest_points(features, budget, first=first))


class FacilitySampler(Sampler):
    """Facility location: maximise sum over patches of their best cosine similarity to the summary.

    Reference: the greedy of Nemhauser et al. (1978) on a monotone submodular objective; here the
    stochastic greedy of Mirzasoleiman et al. (2015) with `epsilon`, which evaluates only a random
    (n / K) log(1 / epsilon) candidates per step. Departs from it beyond `max_pool` patches: both
    the candidates and the covered patches are a seeded subsample of that size (time and memory
    stay bounded; one max_pool^2 similarity matrix). `score`: the mean best cosine of the covered patches.
    """

    name = "facility"

    def __init__(self, seed: int = 0, epsilon: float = 0.01, max_pool: int = 4096):
        super().__init__(seed)
        self.epsilon, self.max_pool = float(epsilon), int(max_pool)

    def _select(self, features, budget, rng, coords, slide_id, **context) -> Selection:
        idx, mean_cover = slide_facility_location(features, budget, rng, self.epsilon, self.max_pool)
        return Selection(idx, score=mean_cover)

    def describe(self) -> dict:
        return super().describe() | {"epsilon": self.epsilon, "max_pool": self.max_pool}
