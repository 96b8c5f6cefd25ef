"""The fold loop of `wsisum-evaluate`: for each fold, train on train, select on val, test on test.

Every fold gets fresh callbacks, loggers and a fresh model, seeded from (seed, fold). The model of
the best validation epoch (the task's `monitor`, by the checkpoint callback) is re-validated, so
every `val_*` metric describes the selected model, and tested. Rows are appended to the run's
`metrics.csv` after each fold, and test predictions go to `predictions/fold_<k>.csv`.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from wsisum.checkpoints import load_checkpoint
from wsisum.data.atomic import atomic_path
from wsisum.data.bad_slides import read_ledger
from wsisum.data.bags import bag_info
from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.hdf5 import open_h5
from wsisum.data.labels import read_labels
from wsisum.data.splits import read_split, split_files
from wsisum.errors import InputError, examples, positive_int
from wsisum.evaluate.folds import fold_datamodule
from wsisum.evaluate.results import FULL, METRICS_FILE, RunLabel, rows_for_fold, write_metrics
from wsisum.evaluate.tasks import TaskSpec
from wsisum.lit.bad_slides import BadSlideCallback
from wsisum.lit.checkpoint_io import SafeCheckpointIO
from wsisum.lit.classifier import METRICS, MILClassifier
from wsisum.lit.trainers import make_trainer
from wsisum.models.mil import MIL_MODELS, MILModel

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """What a run produced: its label, its tidy rows (all folds) and where it wrote them."""

    label: RunLabel | None = None
    rows: list[dict] = field(default_factory=list)
    out_dir: Path | None = None

    def mean(self, metric: str) -> float:
        vals = [r["value"] for r in self.rows if r["metric"] == metric and not math.isnan(r["value"])]
        return sum(vals) / len(vals) if vals else float("nan")

    def folds(self) -> list[int]:
        return sorted({r["fold"] for r in self.rows})


def _choice(group: str) -> str | None:
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_folds(folds: Sequence[int] | int | None, splits_dir: Path) -> list[int]:
    """The folds to run: all `splits_<k>.csv` when None, else the given ones (each must exist)."""
    available = split_files(splits_dir)
    if folds is None:
        return list(available)
    wanted = [int(folds)] if isinstance(folds, int | str) else [int(f) for f in folds]
    missing = [k for k in wanted if k not in available]
    if missing:
        raise InputError(splits_dir, f"no splits file for fold(s) {missing} (found folds {list(available)})")
    if len(set(wanted)) != len(wanted):
        raise InputError(None, f"folds={wanted} lists a fold twice")
    return wanted


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if hasattr(value, "item"):
        value = value.item()
    return None if value in ("", None) else value


def summary_attrs(paths: Sequence[Path]) -> tuple[set[str], set[int], list[tuple[Path, int]]]:
    """(samplers, budgets, [(path, n_patches)]) recorded in summary bags' attrs (what wsisum-summarize writes)."""
    samplers: set[str] = set()
    budgets: set[int] = set()
    sizes = []
    for p in paths:
        if p.suffix != ".h5":
            continue
        try:
            with open_h5(p) as f:
                s, b = _attr(f.attrs.get("sampler")), _attr(f.attrs.get("budget"))
                sizes.append((p, int(f["features"].shape[0])))
        except (OSError, KeyError) as err:
            raise InputError(p, f"unreadable HDF5 file: {err}") from None
        if s is not None:
            samplers.add(str(s))
        if b is not None and str(b) != "auto":  # budget=auto summaries: sizes vary per slide, no one budget
            budgets.add(int(b))
    return samplers, budgets, sizes


def mil_name_of(target: str) -> str:
    """The registry name (abmil, clam_sb, ...) of a MIL model class path, else its lower-cased class name."""
    cls_name = target.rsplit(".", 1)[-1]
    return next((k for k, cls in MIL_MODELS.items() if cls.__name__ == cls_name), cls_name.lower())


def run_label(cfg: DictConfig, task: TaskSpec, dm: ClassificationDataModule) -> RunLabel:
    """What this run evaluates: sampler and budget come from the summary bags unless given."""
    mil = cfg.get("mil_name") or _choice("mil") or mil_name_of(str(cfg.mil._target_))
    sampler, budget = cfg.get("sampler_name"), cfg.get("budget")
    budget = None if budget is None else positive_int(budget, "budget")
    if str(cfg.bags) == FULL:
        if budget is not None:
            raise InputError(None, f"budget={budget} applies to summary bags only (bags=DIR), not bags=full")
        return RunLabel(task.name, str(sampler or FULL), None, str(mil))
    assert dm.cohort is not None
    paths = [rec.bag_path for rec in dm.cohort.slides.values()]
    samplers, budgets, sizes = summary_attrs(paths)
    bag_dir = dm.cohort.bag_dir
    if len(samplers) > 1 or len(budgets) > 1:
        raise InputError(bag_dir, f"summary bags mix samplers {sorted(samplers)} / budgets {sorted(budgets)}")
    found_s, found_b = next(iter(samplers), None), next(iter(budgets), None)
    if sampler is not None and found_s is not None and str(sampler) != found_s:
        raise InputError(bag_dir, f"sampler_name={sampler} but the bags were summarized by '{found_s}'")
    if budget is not None and found_b is not None and budget != found_b:
        raise InputError(bag_dir, f"budget={budget} but the bags were summarized with budget {found_b}")
    budget = budget if budget is not None else found_b
    if budget is not None:
        over = [p.stem for p, n in sizes if n > budget]
        if over:
            raise InputError(bag_dir, f"{len(over)} bag(s) have more than budget={budget} patches ({examples(over)})")
    return RunLabel(task.name, str(sampler or found_s or Path(bag_dir).name), budget, str(mil))


def _logger_kwargs(target: str, fold: int, label: RunLabel, group: str) -> dict[str, Any]:
    cls = target.rsplit(".", 1)[-1]
    if cls in ("CSVLogger", "TensorBoardLogger"):
        return {"version": f"fold_{fold}"}
    if cls == "WandbLogger":
        budget = "" if label.budget is None else f"-{label.budget}"
        return {"name": f"{label.task}-{label.sampler}{budget}-{label.mil}-fold{fold}", "group": group}
    return {}


def _wandb_group(cfg: DictConfig, out_dir: Path) -> str:
    """One W&B group per run, and per multirun (all jobs of a sweep share its directory name)."""
    if cfg.get("wandb_group"):
        return str(cfg.wandb_group)
    where = out_dir.parent if is_multirun() else out_dir
    return f"{cfg.task_name}-{where.name}"


def build_trainer(cfg: DictConfig, fold: int, label: RunLabel, out_dir: Path) -> L.Trainer:
    callbacks = [instantiate(v) for v in (cfg.get("callbacks") or {}).values() if v and "_target_" in v]
    group = _wandb_group(cfg, out_dir)
    loggers = [
        instantiate(v, **_logger_kwargs(str(v._target_), fold, label, group))
        for v in (cfg.get("logger") or {}).values()
        if v and "_target_" in v
    ]
    callbacks.append(_bad_slide_callback(cfg, out_dir))
    return make_trainer(cfg.trainer, callbacks, loggers)


def _bad_slide_callback(cfg: DictConfig, out_dir: Path) -> BadSlideCallback:
    return BadSlideCallback(out_dir, str(cfg.data.get("on_bad_slide", "skip")))


def _without_val_monitor(cfg: DictConfig, fold: int) -> DictConfig:
    """A fold with an empty val partition (tiny cohorts) cannot select or stop on a val metric:
    its checkpoint and early stopping follow train/loss instead, said once in the log."""
    if not str(cfg.monitor).startswith("val/"):
        return cfg
    log.warning("fold %d: the val partition is empty; checkpoints and early stopping follow train/loss", fold)
    fold_cfg = cfg.copy()
    with open_dict(fold_cfg):
        fold_cfg.monitor, fold_cfg.monitor_mode = "train/loss", "min"
    return fold_cfg


def single_device_trainer(cfg: DictConfig, trained: L.Trainer, out_dir: Path) -> L.Trainer:
    """A one-device Trainer of the same accelerator and precision, sharing the loggers of `trained`."""
    return instantiate(
        cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        sync_batchnorm=False,
        callbacks=[_bad_slide_callback(cfg, out_dir)],
        logger=trained.loggers or False,
        plugins=[SafeCheckpointIO()],
    )


def recover_cost(lit: MILClassifier, trainer: L.Trainer, dm: ClassificationDataModule) -> dict[str, Any]:
    """The module's cost record; what a spawned DDP run leaves of it in the main process otherwise."""
    cost = dict(lit.cost)
    if not cost.get("epoch_times_s") and "cost/epoch_time_s" in trainer.callback_metrics:
        cost["epoch_times_s"] = [float(trainer.callback_metrics["cost/epoch_time_s"])]  # last epoch only
    if not cost.get("patches_per_bag"):  # from the bag headers
        cost["patches_per_bag"] = [bag_info(p).n_patches for p in dm.parts["train"].paths]
    return cost


def _finish_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def balanced_class_weights(targets: Sequence[int], n_classes: int) -> list[float]:
    """n / (C * n_c) per class (sklearn's 'balanced'); absent classes get weight 0."""
    counts = torch.bincount(torch.tensor(list(targets)), minlength=n_classes).float()
    w = torch.where(counts > 0, len(targets) / (n_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.tolist()


def write_predictions(path: Path, preds: list[dict], classes: Sequence[str]) -> None:
    rows = []
    for p in preds:
        row = {"slide_id": p["slide_id"], "target": classes[p["target"]]}
        probs = p["probs"]
        row["prediction"] = classes[max(range(len(probs)), key=probs.__getitem__)]
        row.update({f"prob_{c}": v for c, v in zip(classes, probs)})
        rows.append(row)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")


def _metric_values(results: list[Mapping[str, float]], prefix: str) -> dict[str, float]:
    got = results[0] if results else {}
    names = [*METRICS, "loss"]
    return {f"{prefix}_{m}": float(got.get(f"{prefix}/{m}", float("nan"))) for m in names}


def _best_epoch(ckpt_path: str | None) -> int | None:
    if not ckpt_path:
        return None
    return int(load_checkpoint(ckpt_path).get("epoch", -1))


def evaluate_fold(
    cfg: DictConfig, task: TaskSpec, fold: int, out_dir: Path, label: RunLabel | None
) -> tuple[RunLabel, dict[str, float | int | None] | None]:
    """Train, select and test on one fold; returns the run label and the fold's metric values
    (None on the non-zero ranks of a distributed run)."""
    with open_dict(cfg):
        cfg.fold = fold  # callbacks and loggers may interpolate ${fold}
    L.seed_everything(int(cfg.seed) + fold, workers=True, verbose=False)
    dm = fold_datamodule(
        cfg, task, fold, out_dir, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=int(cfg.seed)
    )
    label = label or run_label(cfg, task, dm)
    assert dm.labels is not None and dm.feature_dim is not None
    classes = list(dm.labels.classes)
    n_val_classes = len(set(dm.parts["val"].targets or []))
    if n_val_classes < 2 and task.monitor.startswith("val/") and task.monitor != "val/loss":
        log.warning(
            "fold %d: the val partition has %d class(es), so %s is undefined; checkpoints fall back to the "
            "first epoch. Use a task with monitor: val/loss for such splits.",
            fold,
            n_val_classes,
            task.monitor,
        )
    model: MILModel = instantiate(cfg.mil, _partial_=True)(in_dim=dm.feature_dim, n_classes=len(classes))
    opts = OmegaConf.to_container(cfg.classifier, resolve=True)
    weighting = opts.pop("class_weights", None)
    weights = None
    if weighting == "balanced":
        weights = balanced_class_weights(dm.parts["train"].targets or [], len(classes))
    elif weighting is not None:
        weights = [float(w) for w in weighting]
    lit = MILClassifier(model, class_weights=weights, class_names=classes, **opts)
    trainer = build_trainer(_without_val_monitor(cfg, fold) if not len(dm.parts["val"]) else cfg, fold, label, out_dir)
    log.info(
        "fold %d: %s on %s bags (%s), %d train / %d val / %d test slides, %d classes, feature dim %d",
        fold,
        label.mil,
        label.sampler,
        "all patches" if label.budget is None else f"budget {label.budget}",
        len(dm.parts["train"]),
        len(dm.parts["val"]),
        len(dm.parts["test"]),
        len(classes),
        dm.feature_dim,
    )
    t0 = time.perf_counter()
    try:
        trainer.fit(lit, datamodule=dm)
        fit_time = time.perf_counter() - t0
        if not trainer.is_global_zero:  # DDP: rank 0 evaluates and writes, the others go on to the next fold
            return label, None
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path else None
        # after distributed training, evaluate on one device: a DistributedSampler would pad the
        # val/test sets with repeated slides and bias every metric
        evaluator = trainer if trainer.world_size == 1 else single_device_trainer(cfg, trainer, out_dir)
        has_val = len(dm.parts["val"]) > 0
        val = evaluator.validate(lit, datamodule=dm, ckpt_path=best, verbose=False) if has_val else []
        test = evaluator.test(lit, datamodule=dm, ckpt_path=best, verbose=False)
    finally:
        _finish_wandb()
    cost = recover_cost(lit, trainer, dm)
    bad = read_ledger(out_dir)
    write_predictions(out_dir / "predictions" / f"fold_{fold}.csv", lit.test_predictions, classes)
    patches = cost.get("patches_per_bag") or []
    values: dict[str, float | int | None] = {
        **_metric_values(test, "test"),
        **_metric_values(val, "val"),
        "epoch_time_s": statistics.median(cost["epoch_times_s"]) if cost["epoch_times_s"] else None,
        "fit_time_s": fit_time,
        "peak_rss_mb": cost.get("peak_rss_mb"),
        "peak_rss_increase_mb": cost.get("peak_rss_increase_mb"),
        "peak_gpu_mem_mb": cost.get("peak_gpu_mem_mb"),
        "patches_per_bag": sum(patches) / len(patches) if patches else None,
        "patches_per_bag_max": max(patches) if patches else None,
        "epochs": len(cost["epoch_times_s"]),
        "best_epoch": _best_epoch(best),
        # slides that took part: a bag found bad only when read (e.g. NaN rows) is not counted
        **{f"n_{part}": sum(s not in bad for s in dm.parts[part].slide_ids) for part in ("train", "val", "test")},
    }
    log.info(
        "fold %d: test AUROC %.3f, balanced accuracy %.3f, macro F1 %.3f (selected epoch %s)",
        fold,
        values["test_auroc"],
        values["test_balanced_accuracy"],
        values["test_f1_macro"],
        values["best_epoch"],
    )
    return label, values


def prepare_run(cfg: DictConfig) -> tuple[TaskSpec, list[int]]:
    """The task and the folds of a run, after every check that needs no bag: cohort root, budget, and
    every requested split (leakage, duplicates) before anything trains. Shared by both engines."""
    task = TaskSpec.from_config(
        OmegaConf.to_container(cfg.task, resolve=True) if cfg.get("task") else None, cfg.data.root, _choice("task")
    )
    if not Path(cfg.data.root).expanduser().is_dir():
        raise InputError(cfg.data.root, "cohort root not found (set data.root=DIR)")
    if cfg.get("budget") is not None:
        positive_int(cfg.budget, "budget")  # before any file is read
    folds = resolve_folds(cfg.get("folds"), task.splits_dir)
    labels = read_labels(task.labels, task.classes)
    for fold in folds:
        read_split(
            task.splits_dir / f"splits_{fold}.csv",
            case_of=labels.case_of,
            allow_leakage=bool(cfg.get("allow_leakage", False)),
        )
    return task, folds


def run_evaluation(cfg: DictConfig) -> EvaluationResult:
    """Run every requested fold, writing metrics.csv (after each fold) and predictions in the run dir."""
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    seeds = list(cfg.get("seeds") or [cfg.seed])
    if len(seeds) > 1:
        raise InputError(
            None, f"engine=lightning runs one seed per run (seeds={seeds}): use engine=replicas, or -m seed=..."
        )
    with open_dict(cfg):
        cfg.seed = int(seeds[0])
    task, folds = prepare_run(cfg)
    result = EvaluationResult(out_dir=out_dir)
    label = None
    for fold in folds:
        label, values = evaluate_fold(cfg, task, fold, out_dir, label)
        result.label = label
        if values is None:
            continue
        result.rows.extend(rows_for_fold(label, fold, values, seed=int(cfg.seed)))
        write_metrics(out_dir / METRICS_FILE, result.rows)
    return result
