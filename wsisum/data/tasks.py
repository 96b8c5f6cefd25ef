"""Downstream tasks: which labels, which splits, which classes, and which validation metric selects.

A task is one YAML in the `task` config group; every key is optional except what cannot be guessed:

    name: my_task            # metrics.csv label; default: the config file's name
    labels: labels/x.csv     # default labels/<name>.csv; relative paths are under data.root
    splits: splits/x         # default splits/<name> (CLAM splits_<k>.csv inside)
    classes: [a, b]          # class order; default: the sorted label names of the labels CSV
    datasets: null           # dataset folders under h5_files/ to use; default: all
    monitor: val/loss        # what checkpoint selection and early stopping watch (val/auroc ties on small val sets)
    monitor_mode: min
    metric: auroc            # the headline metric a hyper-parameter search maximises (on val): auroc,
                             # balanced_accuracy, f1_macro or accuracy
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsisum.errors import InputError

KNOWN_KEYS = {"name", "labels", "splits", "classes", "datasets", "monitor", "monitor_mode", "metric", "description"}
HEADLINE_METRICS = ("auroc", "balanced_accuracy", "f1_macro", "accuracy")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: Path
    splits_dir: Path
    classes: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    metric: str = "auroc"

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, root: str | Path, default_name: str | None = None) -> TaskSpec:
        """Build a task from its config mapping, resolving relative paths under the cohort `root`."""
        node = dict(node or {})
        unknown = sorted(set(node) - KNOWN_KEYS)
        if unknown:
            raise InputError(None, f"task config has unknown key(s) {unknown} (known: {sorted(KNOWN_KEYS)})")
        name = node.get("name") or default_name
        if not name:
            raise InputError(None, "the task has no name (set task=NAME or name: in the task YAML)")
        root = Path(root).expanduser()

        def under_root(value: Any, default: str) -> Path:
            p = Path(str(value if value else default)).expanduser()
            return p if p.is_absolute() else root / p

        mode = str(node.get("monitor_mode") or "min")
        if mode not in ("min", "max"):
            raise InputError(None, f"task {name}: monitor_mode must be min or max, not '{mode}'")
        metric = str(node.get("metric") or "auroc")
        if metric not in HEADLINE_METRICS:
            raise InputError(None, f"task {name}: metric must be one of {list(HEADLINE_METRICS)}, not '{metric}'")
        classes = node.get("classes")
        datasets = node.get("datasets")
        return cls(
            name=str(name),
            labels=under_root(node.get("labels"), f"labels/{name}.csv"),
            splits_dir=under_root(node.get("splits"), f"splits/{name}"),
            classes=tuple(str(c) for c in classes) if classes else None,
            datasets=tuple(str(d) for d in datasets) if datasets else None,
            monitor=str(node.get("monitor") or "val/loss"),
            monitor_mode=mode,
            metric=metric,
        )
