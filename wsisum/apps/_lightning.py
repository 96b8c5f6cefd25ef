"""Build a Lightning Trainer with its callbacks and loggers from the `trainer`/`callbacks`/`logger` groups
(and checkpoints read through `wsisum.checkpoints`, never unpickled)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsisum.lit.trainers import make_trainer


def _instantiate_all(node: DictConfig | None) -> list:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    return make_trainer(cfg.trainer, callbacks, loggers)


def finish_loggers(trainer: L.Trainer) -> None:
    """Close W&B runs so offline run dirs hold their final summary (wandb.finish)."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
