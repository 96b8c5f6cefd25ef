"""The one place a Lightning Trainer is made, so every run shows the same things on the console."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsisum.console import configure_console, is_batch
from wsisum.lit.checkpoint_io import SafeCheckpointIO

# per-run displays that a batch run (the pipeline's ~100 fits) leaves out: its own display has the bars
DISPLAY_CALLBACKS = ("RichModelSummary", "ModelSummary", "RichProgressBar", "TQDMProgressBar")


def make_trainer(trainer_cfg: DictConfig, callbacks: Sequence[L.Callback], loggers: Sequence[Any]) -> L.Trainer:
    """A Trainer from its config, with checkpoints read and written through `SafeCheckpointIO`."""
    configure_console()  # Lightning is imported by now: its own console handler goes
    extra: dict[str, Any] = {}
    if is_batch():
        callbacks = [c for c in callbacks if type(c).__name__ not in DISPLAY_CALLBACKS]
        extra = {"enable_progress_bar": False, "enable_model_summary": False}
    return instantiate(
        trainer_cfg, callbacks=list(callbacks), logger=list(loggers) or False, plugins=[SafeCheckpointIO()], **extra
    )


def finish_loggers(trainer: L.Trainer) -> None:
    """Close the W&B runs of a fit so offline run dirs hold their final summary and the next fit
    (the next fold) starts a run of its own: the trainer's W&B loggers, then any run still open."""
    for lg in trainer.loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
    wandb = sys.modules.get("wandb")  # never imported here: without a W&B logger there is nothing to close
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
