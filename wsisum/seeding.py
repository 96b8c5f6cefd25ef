"""Every random draw is seeded from (seed, slide_id[, purpose]): the same command, the same result.

Python's `hash()` is salted per process, so stable hashes come from crc32; `SeedSequence` mixes
the parts into independent streams (no correlation between slides or between purposes).
"""

from __future__ import annotations

import zlib

import numpy as np


def stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def seed_sequence(seed: int, *parts: str | int) -> np.random.SeedSequence:
    words = [int(seed) & 0xFFFFFFFF] + [p if isinstance(p, int) else stable_hash(str(p)) for p in parts]
    return np.random.SeedSequence(words)


def rng_for(seed: int, *parts: str | int) -> np.random.Generator:
    """A numpy generator for one (seed, slide, purpose) triple, e.g. rng_for(0, "slide-1", "kmeans")."""
    return np.random.default_rng(seed_sequence(seed, *parts))


def int_seed_for(seed: int, *parts: str | int) -> int:
    """A 31-bit integer seed (for faiss, torch) derived the same way."""
    return int(seed_sequence(seed, *parts).generate_state(1)[0] & 0x7FFFFFFF)
