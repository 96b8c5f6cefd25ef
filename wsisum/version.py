"""The package version, in a module of its own so that any stage can record it (summary bags, cohort
manifests) without importing the `wsisum` package, whose `__init__` reaches into the stages."""

__version__ = "0.1.0"
