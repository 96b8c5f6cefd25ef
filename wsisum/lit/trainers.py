"""The one place a Lightning Trainer is made, so every run shows the same things on the console."""

from __future__ import annotations

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
