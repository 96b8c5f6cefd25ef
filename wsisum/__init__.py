"""wsisum: whole-slide-image summarization (WSISum) as a Hydra + Lightning experiment framework.

The notebook API (`wsisum/api.py`, docs/python_api.md) is loaded on first use, so `import wsisum`
imports neither torch, Lightning nor Hydra:

    summary = wsisum.summarize_slide(features, coords, budget=16, sampler="kmeans")

`wsisum.summarize` is the summarize stage's subpackage only (`import wsisum.summarize.run`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsisum.errors import InputError
from wsisum.version import __version__

if TYPE_CHECKING:
    from wsisum.api import Summarizer, summarize_slide, write_summary
    from wsisum.data.bags import read_bag
    from wsisum.sampling.base import Selection

__all__ = ["InputError", "Selection", "Summarizer", "__version__", "read_bag", "summarize_slide", "write_summary"]

LAZY_EXPORTS = {
    "Selection": "wsisum.sampling.base",
    "Summarizer": "wsisum.api",
    "read_bag": "wsisum.data.bags",
    "summarize_slide": "wsisum.api",
    "write_summary": "wsisum.api",
}


def __getattr__(name: str) -> Any:
    if name not in LAZY_EXPORTS:
        raise AttributeError(f"module 'wsisum' has no attribute {name!r}")
    value = getattr(importlib.import_module(LAZY_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
