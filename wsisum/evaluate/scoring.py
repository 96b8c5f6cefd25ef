"""A fitted fold's numbers: the metric values of the selected model, its epoch, and the cost of
training (recovered from what a spawned DDP run leaves in the main process where needed)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L

from wsisum.checkpoints import load_checkpoint
from wsisum.data.bags import bag_info
from wsisum.data.datamodules import ClassificationDataModule
from wsisum.lit.classifier import METRICS
from wsisum.lit.cost import training_cost


@dataclass
class FittedFold:
    """What rank 0 holds after fitting one fold: the fit's wall time, the selected checkpoint (None:
    the last weights) and the results of validating and testing it."""

    fit_time: float
    best: str | None
    val: list[Mapping[str, float]]
    test: list[Mapping[str, float]]


def metric_values(results: list[Mapping[str, float]], prefix: str) -> dict[str, float]:
    """`<prefix>_<metric>` for every classifier metric and the loss; NaN where not logged."""
    got = results[0] if results else {}
    names = [*METRICS, "loss"]
    return {f"{prefix}_{m}": float(got.get(f"{prefix}/{m}", float("nan"))) for m in names}


def best_epoch(ckpt_path: str | None) -> int | None:
    if not ckpt_path:
        return None
    return int(load_checkpoint(ckpt_path).get("epoch", -1))


def recover_cost(trainer: L.Trainer, dm: ClassificationDataModule) -> dict[str, Any]:
    """The cost callback's record; what a spawned DDP run leaves of it in the main process otherwise."""
    cost = training_cost(trainer)
    if not cost.get("epoch_times_s") and "cost/epoch_time_s" in trainer.callback_metrics:
        cost["epoch_times_s"] = [float(trainer.callback_metrics["cost/epoch_time_s"])]  # last epoch only
    if not cost.get("patches_per_bag"):  # from the bag headers
        cost["patches_per_bag"] = [bag_info(p).n_patches for p in dm.parts["train"].paths]
    return cost


def fold_values(
    fitted: FittedFold, cost: Mapping[str, Any], bad: Mapping[str, str], dm: ClassificationDataModule
) -> dict[str, float | int | None]:
    """The fold's metric values (the names of `wsisum.evaluate.results`); `bad`: the run's bad slides."""
    patches = cost.get("patches_per_bag") or []
    return {
        **metric_values(fitted.test, "test"),
        **metric_values(fitted.val, "val"),
        "epoch_time_s": statistics.median(cost["epoch_times_s"]) if cost["epoch_times_s"] else None,
        "fit_time_s": fitted.fit_time,
        "peak_rss_mb": cost.get("peak_rss_mb"),
        "peak_rss_increase_mb": cost.get("peak_rss_increase_mb"),
        "peak_gpu_mem_mb": cost.get("peak_gpu_mem_mb"),
        "patches_per_bag": sum(patches) / len(patches) if patches else None,
        "patches_per_bag_max": max(patches) if patches else None,
        "epochs": len(cost["epoch_times_s"]),
        "best_epoch": best_epoch(fitted.best),
        # slides that took part: a bag found bad only when read (e.g. NaN rows) is not counted
        **{f"n_{part}": sum(s not in bad for s in dm.parts[part].slide_ids) for part in ("train", "val", "test")},
    }
