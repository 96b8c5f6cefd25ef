"""wsisum: whole-slide-image summarization (WSISum) as a Hydra + Lightning experiment framework."""

from wsisum.errors import InputError

__all__ = ["InputError"]
__version__ = "0.1.0"
