"""Stage 2: turn a bag into K patch indices (random, k-means stratified, entropy, location, attention)."""

from wsisum.sampling.base import Sampler, Selection

__all__ = ["Sampler", "Selection"]
