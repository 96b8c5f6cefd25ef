"""One fold of `wsisum-evaluate engine=lightning`: train on train, select on val, test on test.

The fold gets fresh callbacks, loggers and a fresh model, seeded from (seed, fold). The model of the
best validation epoch (the task's `monitor`, by the checkpoint callback) is re-validated, so every
`val_*` metric describes the selected model, and tested; test predictions go to
`predictions/fold_<k>.csv`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, open_dict

from wsisum.data.bad_slides import read_ledger
from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.tasks import TaskSpec
from wsisum.evaluate.folds import fold_datamodule
from wsisum.evaluate.results import RunLabel, write_predictions
from wsisum.evaluate.scoring import FittedFold, fold_values, recover_cost
from wsisum.evaluate.setup import run_label
from wsisum.evaluate.trainers import build_trainer, single_device_trainer, without_val_monitor
from wsisum.lit.classifier import MILClassifier, balanced_class_weights
from wsisum.lit.trainers import finish_loggers
from wsisum.models.mil import MILModel

log = logging.getLogger(__name__)


def _warn_one_class_val(task: TaskSpec, dm: ClassificationDataModule, fold: int) -> None:
    n_val_classes = len(set(dm.parts["val"].targets or []))
    if n_val_classes < 2 and task.monitor.startswith("val/") and task.monitor != "val/loss":
        log.warning(
            "fold %d: the val partition has %d class(es), so %s is undefined; checkpoints fall back to the "
            "first epoch. Use a task with monitor: val/loss for such splits.",
            fold,
            n_val_classes,
            task.monitor,
        )


def class_weights(setting: Any, dm: ClassificationDataModule, n_classes: int) -> list[float] | None:
    """`classifier.class_weights`: None, `balanced` (from the fold's training slides) or a list."""
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_class_weights(dm.parts["train"].targets or [], n_classes)
    return [float(w) for w in setting]


def build_classifier(cfg: DictConfig, dm: ClassificationDataModule, classes: list[str]) -> MILClassifier:
    """A fresh `mil` model in the `classifier` LightningModule, with the fold's class weights."""
    assert dm.feature_dim is not None
    model: MILModel = instantiate(cfg.mil, _partial_=True)(in_dim=dm.feature_dim, n_classes=len(classes))
    weights = class_weights(cfg.classifier.get("class_weights"), dm, len(classes))
    return instantiate(cfg.classifier)(model=model, class_weights=weights, class_names=classes)


def _log_fold_start(fold: int, label: RunLabel, dm: ClassificationDataModule, n_classes: int) -> None:
    log.info(
        "fold %d: %s on %s bags (%s), %d train / %d val / %d test slides, %d classes, feature dim %d",
        fold,
        label.mil,
        label.sampler,
        "all patches" if label.budget is None else f"budget {label.budget}",
        len(dm.parts["train"]),
        len(dm.parts["val"]),
        len(dm.parts["test"]),
        n_classes,
        dm.feature_dim,
    )


def fit_and_test(
    cfg: DictConfig, lit: MILClassifier, trainer: L.Trainer, dm: ClassificationDataModule, out_dir: Path
) -> FittedFold | None:
    """Fit, then validate and test the selected checkpoint on rank 0 (None on the other ranks); the
    W&B runs are closed whatever happens, so the next fold starts its own."""
    t0 = time.perf_counter()
    try:
        trainer.fit(lit, datamodule=dm)
        fit_time = time.perf_counter() - t0
        if not trainer.is_global_zero:  # DDP: rank 0 evaluates and writes, the others go on to the next fold
            return None
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
        # after distributed training, evaluate on one device: a DistributedSampler would pad the
        # val/test sets with repeated slides and bias every metric
        evaluator = trainer if trainer.world_size == 1 else single_device_trainer(cfg, trainer, out_dir)
        has_val = len(dm.parts["val"]) > 0
        val = evaluator.validate(lit, datamodule=dm, ckpt_path=best, verbose=False) if has_val else []
        test = evaluator.test(lit, datamodule=dm, ckpt_path=best, verbose=False)
    finally:
        finish_loggers(trainer)
    return FittedFold(fit_time, best, val, test)


def _log_fold_result(fold: int, values: dict[str, float | int | None]) -> None:
    log.info(
        "fold %d: test AUROC %.3f, balanced accuracy %.3f, macro F1 %.3f (selected epoch %s)",
        fold,
        values["test_auroc"],
        values["test_balanced_accuracy"],
        values["test_f1_macro"],
        values["best_epoch"],
    )


def evaluate_fold(
    cfg: DictConfig, task: TaskSpec, fold: int, out_dir: Path, label: RunLabel | None
) -> tuple[RunLabel, dict[str, float | int | None] | None]:
    """Train, select and test on one fold; returns the run label and the fold's metric values
    (None on the non-zero ranks of a distributed run)."""
    with open_dict(cfg):
        cfg.fold = fold  # callbacks and loggers may interpolate ${fold}
    L.seed_everything(int(cfg.seed) + fold, workers=True, verbose=False)
    dm = fold_datamodule(cfg, task, fold, out_dir)
    label = label or run_label(cfg, task, dm)
    assert dm.labels is not None and dm.feature_dim is not None
    classes = list(dm.labels.classes)
    _warn_one_class_val(task, dm, fold)
    lit = build_classifier(cfg, dm, classes)
    trainer = build_trainer(without_val_monitor(cfg, fold) if not len(dm.parts["val"]) else cfg, fold, label, out_dir)
    _log_fold_start(fold, label, dm, len(classes))
    fitted = fit_and_test(cfg, lit, trainer, dm, out_dir)
    if fitted is None:
        return label, None
    cost = recover_cost(trainer, dm)
    bad = read_ledger(out_dir)
    write_predictions(out_dir / "predictions" / f"fold_{fold}.csv", lit.test_predictions, classes)
    values = fold_values(fitted, cost, bad, dm)
    _log_fold_result(fold, values)
    return label, values
