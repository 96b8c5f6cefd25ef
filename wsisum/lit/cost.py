"""The cost of training a model, measured by a Callback so the model itself stays about learning.

`CostCallback.cost` holds: the wall time of each training epoch (data loading included, validation
excluded; logged as `cost/epoch_time_s`), the patches per bag of the first epoch, and at fit end the
process's peak memory (GPU: max allocated; CPU: peak resident set size, reset at fit start where
Linux allows). Nothing goes into checkpoints: the record lives in the process that trained.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from wsisum.lit.bad_slides import is_empty
from wsisum.memory import peak_gpu_mb, peak_rss_mb, reset_peak_gpu, reset_peak_rss, rss_mb


def empty_cost() -> dict[str, Any]:
    """The record before (or without) a fit in this process, e.g. in the main process of a spawned DDP run."""
    return {"epoch_times_s": [], "patches_per_bag": []}


class CostCallback(L.Callback):
    """Times each training epoch and records memory peaks and bag sizes of one fit (see the module doc)."""

    def __init__(self) -> None:
        self.cost: dict[str, Any] = empty_cost()
        self._epoch_start: float | None = None
        self._last_batch_end: float | None = None
        self._rss_reset = False
        self._rss_at_start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.cost = empty_cost()
        if pl_module.device.type == "cuda":
            reset_peak_gpu(pl_module.device)
        self._rss_reset = reset_peak_rss()
        self._rss_at_start = rss_mb("VmRSS")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0 and not is_empty(batch):  # an all-bad batch trained on nothing
            self.cost["patches_per_bag"].extend(batch["mask"].sum(1).tolist())
        if pl_module.device.type == "cuda" and batch_idx + 1 >= trainer.num_training_batches:
            torch.cuda.synchronize(pl_module.device)  # the epoch ends when its last kernels do
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None or self._last_batch_end is None:
            return
        seconds = self._last_batch_end - self._epoch_start  # validation runs before this hook: excluded
        self.cost["epoch_times_s"].append(seconds)
        pl_module.log("cost/epoch_time_s", seconds, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        peak = peak_rss_mb()
        self.cost["peak_rss_mb"] = peak
        if self._rss_reset and self._rss_at_start is not None:
            self.cost["peak_rss_increase_mb"] = peak - self._rss_at_start
        if pl_module.device.type == "cuda":
            self.cost["peak_gpu_mem_mb"] = peak_gpu_mb(pl_module.device)


def training_cost(trainer: L.Trainer) -> dict[str, Any]:
    """A copy of the record of the trainer's `CostCallback` (an empty record when it has none)."""
    found = next((c for c in trainer.callbacks if isinstance(c, CostCallback)), None)
    return dict(found.cost) if found is not None else empty_cost()
