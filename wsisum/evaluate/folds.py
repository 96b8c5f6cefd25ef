"""One fold's classification data, set up the same way by both evaluation engines.

The Lightning path (`runner.evaluate_fold`) and the replicas path (`protocol.load_task_bags`) must
see the same slides: the same split checks, leakage rule and skip-and-record of bad slides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from wsisum.data.bad_slides import BadSlideLedger
from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.layouts import layout_options
from wsisum.evaluate.tasks import TaskSpec


def fold_datamodule(
    cfg: DictConfig, task: TaskSpec, fold: int, out_dir: Path, **loader: Any
) -> ClassificationDataModule:
    """The set-up datamodule of `fold`; its skipped slides are recorded in `out_dir`'s ledger.

    `loader` passes loader options (batch_size, num_workers, seed) to the datamodule.
    """
    dm = ClassificationDataModule(
        root=cfg.data.root,
        task=task.name,
        classes=task.classes,
        fold=fold,
        bags=cfg.bags,
        datasets=task.datasets or cfg.data.get("datasets"),
        labels_path=task.labels,
        splits_dir=task.splits_dir,
        allow_leakage=bool(cfg.get("allow_leakage", False)),
        on_bad_slide=str(cfg.data.get("on_bad_slide", "skip")),
        worker_kind=str(cfg.data.get("worker_kind", "thread")),
        **layout_options(cfg.data),
        **loader,
    )
    dm.setup()
    BadSlideLedger(out_dir, f"setup-fold{fold}").add_all(dm.skipped)
    return dm
