"""The Trainers of one fold of `wsisum-evaluate engine=lightning`: fresh callbacks and loggers per
fold (named and grouped for W&B), the run's bad-slide and cost callbacks, and the one-device Trainer
that scores a model trained under DDP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from wsisum.evaluate.results import RunLabel
from wsisum.evaluate.setup import is_multirun
from wsisum.lit.bad_slides import BadSlideCallback
from wsisum.lit.checkpoint_io import SafeCheckpointIO
from wsisum.lit.cost import CostCallback
from wsisum.lit.trainers import make_trainer

log = logging.getLogger(__name__)


def _logger_kwargs(target: str, fold: int, label: RunLabel, group: str) -> dict[str, Any]:
    cls = target.rsplit(".", 1)[-1]
    if cls in ("CSVLogger", "TensorBoardLogger"):
        return {"version": f"fold_{fold}"}
    if cls == "WandbLogger":
        budget = "" if label.budget is None else f"-{label.budget}"
        return {"name": f"{label.task}-{label.sampler}{budget}-{label.mil}-fold{fold}", "group": group}
    return {}


def _wandb_group(cfg: DictConfig, out_dir: Path) -> str:
    """One W&B group per run, and per multirun (all jobs of a sweep share its directory name)."""
    if cfg.get("wandb_group"):
        return str(cfg.wandb_group)
    where = out_dir.parent if is_multirun() else out_dir
    return f"{cfg.task_name}-{where.name}"


def _bad_slide_callback(cfg: DictConfig, out_dir: Path) -> BadSlideCallback:
    return BadSlideCallback(out_dir, str(cfg.data.get("on_bad_slide", "skip")))


def build_trainer(cfg: DictConfig, fold: int, label: RunLabel, out_dir: Path) -> L.Trainer:
    """The fold's training Trainer. The cost callback is added here, not in `callbacks:`, so that an
    override of that group (`callbacks=...`, `~callbacks.x`) cannot drop the cost metrics."""
    callbacks = [instantiate(v) for v in (cfg.get("callbacks") or {}).values() if v and "_target_" in v]
    group = _wandb_group(cfg, out_dir)
    loggers = [
        instantiate(v, **_logger_kwargs(str(v._target_), fold, label, group))
        for v in (cfg.get("logger") or {}).values()
        if v and "_target_" in v
    ]
    callbacks.append(_bad_slide_callback(cfg, out_dir))
    callbacks.append(CostCallback())
    return make_trainer(cfg.trainer, callbacks, loggers)


def without_val_monitor(cfg: DictConfig, fold: int) -> DictConfig:
    """A fold with an empty val partition (tiny cohorts) cannot select or stop on a val metric:
    its checkpoint and early stopping follow train/loss instead, said once in the log."""
    if not str(cfg.monitor).startswith("val/"):
        return cfg
    log.warning("fold %d: the val partition is empty; checkpoints and early stopping follow train/loss", fold)
    fold_cfg = cfg.copy()
    with open_dict(fold_cfg):
        fold_cfg.monitor, fold_cfg.monitor_mode = "train/loss", "min"
    return fold_cfg


def single_device_trainer(cfg: DictConfig, trained: L.Trainer, out_dir: Path) -> L.Trainer:
    """A one-device Trainer of the same accelerator and precision, sharing the loggers of `trained`."""
    return instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        sync_batchnorm=False,
        callbacks=[_bad_slide_callback(cfg, out_dir)],
        logger=trained.loggers or False,
        plugins=[SafeCheckpointIO()],
    )
