"""Lightning side of bad-slide handling: record (or refuse) the slides a DataLoader could not read.

The datasets never raise for a bad bag inside a DataLoader worker (torch re-raises a worker's
exception as a multi-line traceback, and one corrupt file would end a days-long run); they yield a
marker that `collate_bags` moves to `batch["bad"]`. This callback sees every batch in the main
process: with `on_bad_slide=skip` it records each bad slide once in the run's ledger, with `error`
it stops the run with one `InputError` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

from wsisum.data.bad_slides import BadSlideLedger, check_on_bad
from wsisum.errors import InputError


def is_empty(batch: Any) -> bool:
    """True for a batch whose every slide was bad (nothing to compute on)."""
    return isinstance(batch, dict) and len(batch.get("slide_id", ())) == 0


def empty_batch_loss(module: L.LightningModule) -> torch.Tensor | None:
    """What `training_step` returns for an all-bad batch: None skips the step on one device; under
    DDP every rank must reach the gradient all-reduce, so a zero loss that touches every parameter."""
    if module.trainer.world_size == 1:
        return None
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


class BadSlideCallback(L.Callback):
    def __init__(self, run_dir: str | Path, on_bad_slide: str = "skip"):
        self.run_dir = Path(run_dir)
        self.on_bad_slide = check_on_bad(on_bad_slide)
        self.ledger: BadSlideLedger | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ledger is None:
            self.ledger = BadSlideLedger(self.run_dir, f"rank{trainer.global_rank}-pid{os.getpid()}")

    def _check(self, batch: Any) -> None:
        bad = batch.get("bad") if isinstance(batch, dict) else None
        for slide_id, message in bad or ():
            if self.on_bad_slide == "error":
                raise InputError(None, message)
            assert self.ledger is not None
            self.ledger.add(slide_id, message)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self._check(batch)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        self._check(batch)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self._check(batch)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self._check(batch)
