"""Pretraining the summarizer: masked patch reconstruction + lambda x multi-teacher distillation.

The fitted teacher statistics (per-teacher mean/scale, PCA) live in buffers, so a checkpoint is
self-contained: summarization later turns raw teacher embeddings into targets exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsisum.lit.bad_slides import empty_batch_loss, is_empty
from wsisum.models.summarizer import MaskedSummarizer, random_visible
from wsisum.teachers.fusion import TeacherFusion


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class SummarizerPretraining(L.LightningModule):
    def __init__(
        self,
        feature_dim: int,
        teacher_dims: Mapping[str, int],
        fusion_mode: str = "heads",
        fused_dim: int | None = None,
        model: Mapping[str, Any] | None = None,
        distill_loss: str = "mse",
        lambda_distill: float = 1.0,
        mask_ratio: float = 0.875,
        lr: float = 1.5e-4,
        min_lr: float = 1e-6,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        seed: int = 0,
        visible_sizes: list[int] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ):
        """`optimizer`: a partial taking the parameter groups (the `lit.optimizer` config); None =
        AdamW with `lr`, `betas` and `weight_decay`. It is not a hyper-parameter: a checkpoint keeps
        plain values only, and is rebuilt for inference without it."""
        super().__init__()
        if fusion_mode not in ("pca", "heads"):
            raise ValueError(f"fusion_mode must be 'pca' or 'heads', got {fusion_mode!r}")
        if distill_loss not in ("mse", "cosine"):
            raise ValueError(f"distill_loss must be 'mse' or 'cosine', got {distill_loss!r}")
        if fusion_mode == "pca" and not fused_dim:
            raise ValueError("fusion_mode='pca' needs fused_dim")
        if visible_sizes is not None and (not len(visible_sizes) or min(int(v) for v in visible_sizes) < 1):
            raise ValueError(f"visible_sizes must be positive patch counts, got {visible_sizes}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.make_optimizer = optimizer or partial(
            torch.optim.AdamW, lr=lr, betas=tuple(betas), weight_decay=weight_decay
        )
        self.teacher_names = list(teacher_dims)
        out_dims = {"fused": int(fused_dim)} if fusion_mode == "pca" else dict(teacher_dims)
        self.model = MaskedSummarizer(feature_dim, out_dims, **dict(model or {}))
        for t, d in teacher_dims.items():
            self.register_buffer(f"mean_{_safe(t)}", torch.zeros(d))
            self.register_buffer(f"scale_{_safe(t)}", torch.ones(d))
        if fusion_mode == "pca":
            total = sum(teacher_dims.values())
            self.register_buffer("pca_mean", torch.zeros(total))
            self.register_buffer("pca_components", torch.zeros(int(fused_dim), total))

    # --- teacher targets ----------------------------------------------------------------------------
    def set_fusion(self, fusion: TeacherFusion) -> None:
        """Copy fitted statistics (from the training split) into the buffers."""
        for t in self.teacher_names:
            getattr(self, f"mean_{_safe(t)}").copy_(torch.from_numpy(np.asarray(fusion.mean[t])))
            getattr(self, f"scale_{_safe(t)}").copy_(torch.from_numpy(np.asarray(fusion.scale[t])))
        if self.hparams.fusion_mode == "pca":
            self.pca_mean.copy_(torch.from_numpy(fusion.pca_mean))
            self.pca_components.copy_(torch.from_numpy(fusion.pca_components))

    def targets(
        self, teachers: Mapping[str, Tensor], present: Mapping[str, Tensor]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """Head name -> (target (B, d), present (B,)); missing teachers enter PCA as their mean."""
        std = {}
        for t in self.teacher_names:
            z = (teachers[t].float() - getattr(self, f"mean_{_safe(t)}")) / getattr(self, f"scale_{_safe(t)}")
            std[t] = torch.where(present[t][:, None], z, torch.zeros_like(z))
        if self.hparams.fusion_mode == "pca":
            cat = torch.cat([std[t] for t in self.teacher_names], dim=-1)
            fused = (cat - self.pca_mean) @ self.pca_components.T
            any_present = torch.stack([present[t] for t in self.teacher_names]).any(0)
            return {"fused": (fused, any_present)}
        return {t: (std[t], present[t]) for t in self.teacher_names}

    @staticmethod
    def teacher_cosine(outputs: Mapping[str, Tensor], targets: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Per-bag cosine between the student's slide outputs and the targets, averaged over present heads."""
        total, count = 0.0, 0.0
        for name, (target, present) in targets.items():
            cos = F.cosine_similarity(outputs[name].float(), target, dim=-1)
            total = total + cos * present
            count = count + present.float()
        return total / torch.clamp(torch.as_tensor(count), min=1.0)

    # --- losses ------------------------------------------------------------------------------------------
    def _distill_loss(self, outputs: Mapping[str, Tensor], targets: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
        losses, absent = [], []
        for name, (target, present) in targets.items():
            if not present.any():
                absent.append(outputs[name])
                continue
            pred = outputs[name].float()
            if self.hparams.distill_loss == "mse":
                per_bag = ((pred - target) ** 2).sum(-1)  # squared distance; targets have norm ~1 per teacher
            else:
                per_bag = 1.0 - F.cosine_similarity(pred, target, dim=-1)
            losses.append((per_bag * present).sum() / present.sum())
        # a head whose teacher no slide of the batch has still joins the graph with a zero gradient:
        # under DDP every rank must reduce a gradient for every parameter, or the others wait forever
        unused = sum(o.float().sum() for o in absent) * 0.0 if absent else 0.0
        if not losses:  # no teacher in the whole batch: every head is in `absent`, the loss is that zero
            return unused
        return torch.stack(losses).mean() + unused

    def draw_visible_size(self, generator: torch.Generator | None = None) -> int | None:
        """Budget-aware pretraining: this batch's visible-set size, uniform over `visible_sizes` (the
        budgets summaries are asked for), so every budget is scored in distribution; None = mask_ratio."""
        sizes = self.hparams.visible_sizes
        if not sizes:
            return None
        return int(sizes[int(torch.randint(len(sizes), (1,), generator=generator))])

    def step(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        feats, mask = batch["features"].float(), batch["mask"]  # bags arrive in their stored dtype
        visible = random_visible(mask, self.hparams.mask_ratio, generator, self.draw_visible_size(generator))
        out = self.model(feats, mask, batch.get("pos"), visible)
        hidden = mask & ~visible
        err = ((out["reconstruction"].float() - feats.float()) ** 2).mean(-1)
        rec = (err * hidden).sum() / hidden.sum().clamp(min=1)
        targets = self.targets(batch["teachers"], batch["teacher_present"])
        distill = self._distill_loss(out["distill"], targets)
        loss = rec + self.hparams.lambda_distill * distill
        cos = self.teacher_cosine(out["distill"], targets)
        return {"loss": loss, "loss_rec": rec, "loss_distill": distill, "teacher_cos": cos.mean()}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        if is_empty(batch):  # every slide of the batch was bad input (recorded by BadSlideCallback)
            return empty_batch_loss(self)
        m = self.step(batch)
        loss = m.pop("loss")
        bs = batch["features"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, on_step=True, on_epoch=True)
        self.log_dict({f"train/{k}": v for k, v in m.items()}, batch_size=bs, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if is_empty(batch):
            return
        # fixed masks for validation: the curve moves only because the model does
        gen = torch.Generator().manual_seed(int(self.hparams.seed) * 100_003 + batch_idx)
        m = self.step(batch, gen)
        bs = batch["features"].shape[0]
        self.log("val/teacher_cos", m.pop("teacher_cos"), prog_bar=True, batch_size=bs, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in m.items()}, batch_size=bs, sync_dist=True)

    # --- optimisation --------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser over two groups (no weight decay for biases, norms and tokens), with a linear
        warm-up over `warmup_ratio` of the steps, then a cosine down to `min_lr`, stepped per batch."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name.endswith("_token") else decay).append(p)
        opt = self.make_optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(1, int(self.hparams.warmup_ratio * total))
        floor = self.hparams.min_lr / opt.defaults["lr"]

        def lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
