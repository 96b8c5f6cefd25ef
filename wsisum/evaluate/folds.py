"""One fold's classification data, set up the same way by both evaluation engines.

The Lightning path (`fit.evaluate_fold`) and the replicas path (`protocol.load_task_bags`) must
see the same slides: the same split checks, leakage rule and skip-and-record of bad slides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from wsisum.data.bad_slides import BadSlideLedger
from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.tasks import TaskSpec


def fold_datamodule(
    cfg: DictConfig, task: TaskSpec, fold: int, out_dir: Path, **overrides: Any
) -> ClassificationDataModule:
    """The set-up datamodule of `fold`, instantiated from the `data` config (cohort, bags, loader)
    with the task's labels, splits and datasets; its skipped slides are recorded in `out_dir`'s
    ledger. `overrides` replace `data` options (e.g. batch_size) for this one datamodule."""
    dm = instantiate(cfg.data)(
        task=task.name,
        classes=task.classes,
        fold=fold,
        datasets=task.datasets or cfg.data.get("datasets"),
        labels_path=task.labels,
        splits_dir=task.splits_dir,
        **overrides,
    )
    dm.setup()
    BadSlideLedger(out_dir, f"setup-fold{fold}").add_all(dm.skipped)
    return dm
