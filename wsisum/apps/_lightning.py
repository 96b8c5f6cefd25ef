"""Build a Lightning Trainer with its callbacks and loggers from the `trainer`/`callbacks`/`logger` groups
(and checkpoints read through `wsisum.checkpoints`, never unpickled)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsisum.lit.trainers import finish_loggers, make_trainer

__all__ = ["build_trainer", "finish_loggers"]  # apps import the finisher from here with the builder


def _instantiate_all(node: DictConfig | None) -> list:
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def build_trainer(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    return make_trainer(cfg.trainer, callbacks, loggers)
