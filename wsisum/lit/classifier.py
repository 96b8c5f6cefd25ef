"""Slide classification with a MIL head: cross-entropy, macro AUROC / balanced accuracy / macro F1.

Metrics are computed once per epoch over every slide of the partition (never averaged over batches):
`SlideMetrics` gathers the softmax probabilities and targets (a torchmetrics `Metric`, so DDP ranks
are concatenated) and calls torchmetrics' functional metrics per class. Averages follow
scikit-learn's conventions, so a fold whose test set lacks a class is scored like sklearn would:

- `auroc`: macro one-vs-rest AUROC over the classes present in the targets (for two classes this is
  the binary AUROC); NaN when fewer than two classes are present.
- `balanced_accuracy`: mean per-class recall over the classes present in the targets.
- `f1_macro`: mean per-class F1 over the classes present in the targets or the predictions.
- `accuracy`: plain accuracy.

The cost of training (epoch times, memory peaks, patches per bag) is measured by
`wsisum.lit.cost.CostCallback`, which the evaluation adds to every Trainer that fits a classifier.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_auroc, multiclass_f1_score, multiclass_recall
from torchmetrics.utilities import dim_zero_cat

from wsisum.checkpoints import load_checkpoint
from wsisum.errors import InputError
from wsisum.lit.bad_slides import empty_batch_loss, is_empty
from wsisum.models.mil import MILModel, MILOutput

METRICS = ("auroc", "balanced_accuracy", "f1_macro", "accuracy")


class SlideMetrics(Metric):
    """Epoch-level slide metrics from probabilities (B, C) and integer targets (B,)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_classes: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_classes = int(n_classes)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach().long())

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.probs, list) and not self.probs:  # (after a DDP sync the states are tensors)
            return dict.fromkeys(METRICS, torch.tensor(float("nan")))
        return slide_metrics(dim_zero_cat(self.probs), dim_zero_cat(self.target), self.n_classes)


def slide_metrics(probs: Tensor, target: Tensor, n_classes: int) -> dict[str, Tensor]:
    """The metrics of the module docstring for one set of predictions (sklearn-compatible averages)."""
    probs, target = probs.float(), target.long()
    preds = probs.argmax(-1)
    present = torch.bincount(target, minlength=n_classes) > 0
    predicted = torch.bincount(preds, minlength=n_classes) > 0
    nan = probs.new_tensor(float("nan"))
    with warnings.catch_warnings():  # absent classes warn; they are excluded from the averages below
        warnings.simplefilter("ignore")
        auroc = nan
        if int(present.sum()) >= 2:
            per_class = multiclass_auroc(probs, target, n_classes, average=None, thresholds=None)
            auroc = per_class[present].mean()
        recall = multiclass_recall(preds, target, n_classes, average=None)
        f1 = multiclass_f1_score(preds, target, n_classes, average=None)
    return {
        "auroc": auroc,
        "balanced_accuracy": recall[present].mean(),
        "f1_macro": f1[present | predicted].mean(),
        "accuracy": (preds == target).float().mean(),
    }


def balanced_class_weights(targets: Sequence[int], n_classes: int) -> list[float]:
    """n / (C * n_c) per class (sklearn's 'balanced'); absent classes get weight 0."""
    counts = torch.bincount(torch.tensor(list(targets)), minlength=n_classes).float()
    w = torch.where(counts > 0, len(targets) / (n_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.tolist()


class MILClassifier(L.LightningModule):
    """A MIL model trained with (optionally class-weighted) cross-entropy on slide labels.

    Batches are what `collate_bags` yields: `features` (B, N, D), `mask` (B, N), `target` (B,).
    Test predictions (slide id, target, class probabilities) are kept in `test_predictions`.
    """

    def __init__(
        self,
        model: MILModel,
        lr: float = 2e-4,
        weight_decay: float = 1e-4,
        scheduler: str | None = "cosine",
        class_weights: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ):
        """`optimizer`: a partial taking the parameters (the `classifier.optimizer` config); None =
        AdamW with `lr` and `weight_decay`. Like the model, it is no hyper-parameter of the checkpoint."""
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.make_optimizer = optimizer or partial(torch.optim.AdamW, lr=lr, weight_decay=weight_decay)
        self.model = model
        n = model.n_classes
        if class_names is not None and len(class_names) != n:
            raise ValueError(f"{len(class_names)} class names for a {n}-class model")
        if class_weights is not None and len(class_weights) != n:
            raise ValueError(f"{len(class_weights)} class weights for a {n}-class model")
        if scheduler not in (None, "none", "cosine"):
            raise ValueError(f"unknown scheduler '{scheduler}' (cosine or none)")
        self.register_buffer(
            "class_weights", None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float)
        )
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
        self.metrics = torch.nn.ModuleDict({p: SlideMetrics(n) for p in ("val", "test")})
        self.test_predictions: list[dict[str, Any]] = []

    # --- model ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], with_target: bool = False) -> MILOutput:
        target = batch["target"] if with_target else None
        return self.model(batch["features"].float(), batch["mask"], target=target)  # bags keep their stored dtype

    def _loss(self, out: MILOutput, target: Tensor) -> Tensor:
        ce = F.cross_entropy(
            out.logits.float(), target, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )
        w = self.model.aux_weight
        if out.aux_loss is None or w == 0:
            return ce
        return (1 - w) * ce + w * out.aux_loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if is_empty(batch):  # every slide of the batch was bad input (recorded by BadSlideCallback)
            return empty_batch_loss(self)
        out = self(batch, with_target=True)
        loss = self._loss(out, batch["target"])
        bs = len(batch["target"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=bs, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, Any], part: str) -> Tensor:
        out = self(batch)
        loss = F.cross_entropy(out.logits.float(), batch["target"], weight=self.class_weights)
        probs = torch.softmax(out.logits.float(), dim=-1)
        self.metrics[part].update(probs, batch["target"])
        self.log(f"{part}/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["target"]), sync_dist=True)
        return probs

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not is_empty(batch):
            self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if is_empty(batch):
            return
        probs = self._eval_step(batch, "test")
        for sid, y, p in zip(batch["slide_id"], batch["target"].tolist(), probs.cpu().tolist()):
            self.test_predictions.append({"slide_id": sid, "target": y, "probs": p})

    def _log_metrics(self, part: str) -> None:
        values = self.metrics[part].compute()
        self.metrics[part].reset()
        for name, value in values.items():
            self.log(f"{part}/{name}", value.float(), prog_bar=name == "auroc")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    # --- checkpoints --------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Make the checkpoint self-describing: which MIL class, built how, for which classes."""
        m = self.model
        checkpoint["mil_model"] = {
            "target": f"{type(m).__module__}.{type(m).__qualname__}",
            "init_args": dict(m.init_args),
            "class_names": list(self.class_names),
        }

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt = self.make_optimizer(self.parameters())
        epochs = self.trainer.max_epochs if self.trainer is not None else None
        if self.hparams.scheduler != "cosine" or not epochs or epochs < 1:
            return opt
        eta_min = opt.defaults["lr"] * 0.01
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


@dataclass
class LoadedMIL:
    """A MIL model restored from a `wsisum-evaluate` checkpoint (in eval mode), with its class names."""

    model: MILModel
    class_names: list[str]
    path: str


def load_mil_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedMIL:
    """Rebuild the MIL model of a `MILClassifier` checkpoint, e.g. ABMIL for attention sampling:

    >>> mil = load_mil_checkpoint("outputs/evaluate/runs/.../checkpoints/fold_0/best-epoch012.ckpt")
    >>> scores = mil.model(features[None]).attention[0]  # (N,) per-patch attention scores
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    meta = ckpt.get("mil_model")
    if not isinstance(meta, dict) or not isinstance(meta.get("target"), str):
        raise InputError(path, "not a wsisum-evaluate MIL checkpoint (no 'mil_model' entry)")
    module_name, _, cls_name = meta["target"].rpartition(".")
    cls = None
    if module_name.startswith("wsisum."):  # importing a module runs it: only the project's own
        try:
            cls = getattr(importlib.import_module(module_name), cls_name, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, MILModel)):
        raise InputError(path, f"checkpoint names an unknown MIL model class {meta['target']}")
    model = cls(**meta["init_args"])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return LoadedMIL(model.eval(), list(meta["class_names"]), str(path))
