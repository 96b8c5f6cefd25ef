"""`wsisum-evaluate engine=replicas`: every (fold, seed) replicate of a run trained at once.

The evaluation protocol is the Lightning path's (train on train, select on val by the task's
monitor with early stopping, test the selected model), with ABMIL only. Each fold's slides come
from `ClassificationDataModule.setup` (same split checks, same skip-and-record of bad slides); every
slide's bag is then read once into memory (`BagStore`) and the replicas folds x seeds train together
(`wsisum.evaluate.replicas`). The run dir gets `metrics.csv` (one replicate per (fold, seed)),
`curves.csv` (replica, fold, seed, epoch, train_loss, val_loss, val_auroc) and
`predictions/fold_<k>_seed_<s>.csv`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from wsisum.data.atomic import atomic_path
from wsisum.data.bad_slides import BadSlideLedger
from wsisum.data.datasets import BagDataset
from wsisum.data.splits import PARTS
from wsisum.data.tasks import TaskSpec
from wsisum.errors import InputError
from wsisum.evaluate.folds import fold_datamodule
from wsisum.evaluate.replicas import BagStore, ReplicaResult, ReplicaSettings, ReplicaSpec, fit_replicas
from wsisum.evaluate.results import METRICS_FILE, RunLabel, rows_for_fold, write_metrics, write_predictions
from wsisum.evaluate.runner import EvaluationResult
from wsisum.evaluate.setup import mil_name_of, prepare_run, run_label
from wsisum.lit.classifier import balanced_class_weights

log = logging.getLogger(__name__)
CURVES_FILE = "curves.csv"
ENGINES = ("lightning", "replicas")


def check_engine(cfg: DictConfig) -> str:
    engine = str(cfg.get("engine") or "lightning")
    if engine not in ENGINES:
        raise InputError(None, f"engine={engine}: use one of {list(ENGINES)}")
    return engine


def replica_settings(cfg: DictConfig, task: TaskSpec) -> ReplicaSettings:
    """The `replicas:` block, with the ABMIL sizes of `mil` where the block leaves them null.

    Refuses (one line) any MIL model but ABMIL: the replicas are stacked ABMILs.
    """
    mil = cfg.get("mil") or {}
    name = mil_name_of(str(mil.get("_target_", "")))
    if name != "abmil":
        raise InputError(None, f"engine=replicas trains ABMIL only (mil={name}): use engine=lightning for mil={name}")
    rep = cfg.get("replicas") or {}

    def pick(key: str, default: object) -> object:
        value = rep.get(key)
        return mil.get(key, default) if value is None else value

    try:
        return ReplicaSettings(
            batch_size=int(rep.get("batch_size", 4)),
            lr=float(rep.get("lr", 1e-3)),
            weight_decay=float(rep.get("weight_decay", 1e-4)),
            max_epochs=int(rep.get("max_epochs", 60)),
            patience=int(rep.get("patience", 10)),
            scheduler=str(rep.get("scheduler") or "none"),
            hidden_dim=int(pick("hidden_dim", 256)),
            att_dim=int(pick("att_dim", 128)),
            dropout=float(pick("dropout", 0.25)),
            gated=bool(pick("gated", True)),
            monitor=task.monitor,
            monitor_mode=task.monitor_mode,
            eval_batch_size=int(rep.get("eval_batch_size", 64)),
        )
    except ValueError as err:
        raise InputError(None, f"replicas: {err}") from None


def resolve_seeds(cfg: DictConfig) -> list[int]:
    """`seeds`, else [seed]; each once."""
    raw = cfg.get("seeds")
    seeds = [int(cfg.seed)] if raw is None else ([int(raw)] if isinstance(raw, int | str) else [int(s) for s in raw])
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(None, f"seeds={seeds} must list at least one seed, each once")
    return seeds


@dataclass
class TaskBags:
    """Every usable slide of the run's folds in memory, and each fold's partitions as store indices."""

    store: BagStore
    parts: dict[int, dict[str, tuple[int, ...]]]
    classes: list[str]
    label: RunLabel


def load_task_bags(cfg: DictConfig, task: TaskSpec, folds: Sequence[int], out_dir: Path) -> TaskBags:
    """Set up each fold as the Lightning path does (bad slides skipped and recorded, or an error),
    then read every slide's bag once; a bag that fails to read is left out of every fold."""
    on_bad = str(cfg.data.get("on_bad_slide", "skip"))
    label, classes = None, None
    split_parts: dict[int, dict[str, list[str]]] = {}
    where: dict[int, str] = {}
    sources: dict[str, tuple[str, int]] = {}  # slide id -> (bag path, target)
    for fold in folds:
        dm = fold_datamodule(cfg, task, fold, out_dir)
        label = label or run_label(cfg, task, dm)
        assert dm.labels is not None and dm.split is not None
        classes = list(dm.labels.classes)
        where[fold] = dm.split.path
        split_parts[fold] = {p: list(dm.parts[p].slide_ids) for p in PARTS}
        for p in PARTS:
            ds = dm.parts[p]
            for sid, path, y in zip(ds.slide_ids, ds.paths, ds.targets or []):
                sources[sid] = (path, y)
    assert label is not None and classes is not None
    ids = sorted(sources)
    data = BagDataset([sources[s][0] for s in ids], ids, [sources[s][1] for s in ids])
    ledger = BadSlideLedger(out_dir, f"load-pid{os.getpid()}")
    feats, targets, kept = [], [], []
    for i, sid in enumerate(ids):
        item = data[i]
        if "error" in item:
            if on_bad == "error":
                raise InputError(None, item["error"])
            ledger.add(sid, item["error"])
            continue
        feats.append(item["features"])
        targets.append(item["target"])
        kept.append(sid)
    if not kept:
        raise InputError(None, f"no readable bag among the {len(ids)} slide(s) of task {task.name}")
    index = {s: i for i, s in enumerate(kept)}
    parts = {}
    for fold, fp in split_parts.items():
        parts[fold] = {p: tuple(index[s] for s in ids_ if s in index) for p, ids_ in fp.items()}
        for p in ("train", "test"):
            if not parts[fold][p]:
                raise InputError(where[fold], f"the {p} partition is empty")
    return TaskBags(BagStore(feats, targets, kept), parts, classes, label)


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with `n` torch threads (None: every core this process may use), then restore the setting."""
    before = torch.get_num_threads()
    n = int(n) if n else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def replica_specs(bags: TaskBags, folds: Sequence[int], seeds: Sequence[int], weighting: object) -> list[ReplicaSpec]:
    specs = []
    for fold in folds:
        p = bags.parts[fold]
        weights = None
        if weighting == "balanced":
            targets = bags.store.targets[list(p["train"])].tolist()
            weights = tuple(balanced_class_weights(targets, len(bags.classes)))
        elif weighting is not None:
            weights = tuple(float(w) for w in weighting)  # type: ignore[union-attr]
            if len(weights) != len(bags.classes):
                raise InputError(
                    None, f"replicas.class_weights has {len(weights)} values for {len(bags.classes)} classes"
                )
        for seed in seeds:
            specs.append(ReplicaSpec(fold, seed, p["train"], p["val"], p["test"], weights))
    return specs


def _warn_about_val(specs: Sequence[ReplicaSpec], bags: TaskBags, monitor: str) -> None:
    for sp in specs:
        if sp.seed != specs[0].seed:
            continue
        if not sp.val:
            log.warning("fold %d: the val partition is empty; selection and early stopping follow train/loss", sp.fold)
        elif monitor != "val/loss" and len(set(bags.store.targets[list(sp.val)].tolist())) < 2:
            log.warning("fold %d: the val partition has one class, so %s is undefined (use val/loss)", sp.fold, monitor)


def write_curves(path: Path, curves: Sequence[dict]) -> Path:
    with atomic_path(path) as tmp:
        pd.DataFrame(list(curves)).to_csv(tmp, index=False, float_format="%.6g")
    return path


def run_replicas(cfg: DictConfig) -> EvaluationResult:
    """Train and test every (fold, seed) of the run as one replica; write metrics, curves, predictions."""
    out_dir = Path(cfg.paths.output_dir)
    task, folds = prepare_run(cfg)
    settings = replica_settings(cfg, task)
    seeds = resolve_seeds(cfg)
    t0 = time.perf_counter()
    bags = load_task_bags(cfg, task, folds, out_dir)
    specs = replica_specs(bags, folds, seeds, (cfg.get("replicas") or {}).get("class_weights"))
    _warn_about_val(specs, bags, settings.monitor)
    lab = bags.label
    with torch_threads(cfg.get("threads")) as n_threads:
        log.info(
            "%s on %s bags (%s): %d replicas (folds %s x seeds %s) of %d slides, %d classes, dim %d, %d threads",
            lab.mil,
            lab.sampler,
            "all patches" if lab.budget is None else f"budget {lab.budget}",
            len(specs),
            list(folds),
            list(seeds),
            len(bags.store),
            len(bags.classes),
            bags.store.dim,
            n_threads,
        )
        load_s = time.perf_counter() - t0
        results, curves = fit_replicas(bags.store, specs, len(bags.classes), settings)
    result = EvaluationResult(label=lab, out_dir=out_dir)
    for res in results:
        result.rows.extend(rows_for_fold(lab, res.spec.fold, res.values, seed=res.spec.seed))
        _write_replica_predictions(out_dir, res, bags.classes)
    write_metrics(out_dir / METRICS_FILE, result.rows)
    write_curves(out_dir / CURVES_FILE, curves)
    log.info(
        "%d replicas in %.1f s (bags read in %.1f s): mean test AUROC %.3f",
        len(specs),
        time.perf_counter() - t0,
        load_s,
        result.mean("test_auroc"),
    )
    return result


def _write_replica_predictions(out_dir: Path, res: ReplicaResult, classes: Sequence[str]) -> None:
    path = out_dir / "predictions" / f"fold_{res.spec.fold}_seed_{res.spec.seed}.csv"
    write_predictions(path, res.predictions, classes)
