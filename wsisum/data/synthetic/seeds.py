"""The random stream of one named part of a cohort, e.g. (seed, dataset, slide index).

Stable hashes of the names come from `wsisum.seeding.stable_hash`. The stream itself is not
`wsisum.seeding.rng_for`: that one masks the seed to 32 bits, which gives other streams for seeds
>= 2**32 (and makes seed 2**32 write the cohort of seed 0); `generate_cohort` accepts any
non-negative seed, and cohorts of every accepted seed must stay the same bit for bit.
"""

from __future__ import annotations

import numpy as np

from wsisum.seeding import stable_hash


def stream_rng(seed: int, *parts: str | int) -> np.random.Generator:
    """A generator for one named stream, e.g. (seed, dataset, slide index)."""
    words = [seed] + [p if isinstance(p, int) else stable_hash(p) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))
