"""`wsisum-train data.root=DIR [model=...] [teachers=...] [fusion=...]`: pretrain the summarizer."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.apps._lightning import build_trainer, finish_loggers
from wsisum.checkpoints import load_checkpoint
from wsisum.data.bad_slides import BadSlideLedger, report_bad_slides
from wsisum.data.datamodules import PretrainDataModule
from wsisum.errors import InputError
from wsisum.lit.bad_slides import BadSlideCallback
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.runlock import named_run_dir_lock
from wsisum.sampling.cluster_cache import format_stats, stats_since, stats_snapshot
from wsisum.teachers.fusion import FUSION_FILE, fit_training_fusion

log = logging.getLogger(__name__)
BAD_INPUTS = "bad_inputs"  # metrics key: how many slides/teacher files the run skipped


def build_module(cfg: DictConfig, dm: PretrainDataModule, out_dir: Path) -> SummarizerPretraining:
    """The `lit` module, sized by the data, with the teacher fusion fitted on the training slides
    (saved in the run dir as .npz, and copied into the module's buffers)."""
    train_part = dm.parts["train"]
    fusion = fit_training_fusion(train_part.teacher_paths, dm.embeddings, cfg.fusion.mode, cfg.fusion.out_dim)
    fusion.save(out_dir / FUSION_FILE)
    module = instantiate(cfg.lit)(
        feature_dim=dm.feature_dim, teacher_dims=dm.teacher_dims, fused_dim=fusion.out_dims.get("fused")
    )
    module.set_fusion(fusion)
    return module


def resume_from(ckpt_path: str | None, out_dir: Path) -> str | None:
    """`ckpt_path=auto`: this run dir's last.ckpt when there is one (a requeued or re-run job with a
    pinned `hydra.run.dir` picks up where it died), else a fresh start. Any other value is a path,
    read (weights only) now, so a file from elsewhere is refused before any work."""
    if ckpt_path != "auto":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise InputError(ckpt_path, "checkpoint to resume from not found")
        if ckpt_path is not None:
            load_checkpoint(ckpt_path)
        return ckpt_path
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.info("no %s yet: starting from scratch", last)
    return None


@report_input_errors
def train(cfg: DictConfig) -> dict[str, float]:
    out_dir = Path(cfg.paths.output_dir)
    resume = resume_from(cfg.ckpt_path, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    before = stats_snapshot()  # the pools' clustering (in this process; loader workers keep their own counts)
    dm: PretrainDataModule = instantiate(cfg.data)
    dm.setup()
    log.info(
        "pretraining on %d slides (%d for validation), feature dim %d, teachers %s",
        len(dm.parts["train"]) + len(dm.parts["val"]),
        len(dm.parts["val"]),
        dm.feature_dim,
        dm.teacher_dims,
    )
    BadSlideLedger(out_dir, "setup").add_all(dm.skipped)
    module = build_module(cfg, dm, out_dir)
    trainer = build_trainer(cfg, [BadSlideCallback(out_dir, cfg.data.on_bad_slide)])
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    finish_loggers(trainer)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("done: %s", {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/")})
    log.info("clustering cache (%s): %s", cfg.pool.cache_dir, format_stats(stats_since(before)))
    if trainer.is_global_zero:
        metrics[BAD_INPUTS] = report_bad_slides(out_dir, "training")
    return metrics


@hydra_app("train")
def main(cfg: DictConfig) -> float | None:
    with named_run_dir_lock(cfg):  # a named run dir (hydra.run.dir=...) takes one run at a time
        metrics = train(cfg)
    if metrics.get(BAD_INPUTS):
        raise SystemExit(1)  # trained and saved without them, but the run is not what was asked for
    return metrics.get("val/teacher_cos")  # the value an Optuna sweep optimises


if __name__ == "__main__":
    main()
