"""What a `wsisum-evaluate` run is, decided before anything trains: its task and folds (every check
that needs no bag), and its label (sampler, budget, MIL), read from the config, Hydra's choices and
the summary bags' attrs. Shared by both engines (Lightning and replicas)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.hdf5 import open_h5
from wsisum.data.labels import read_labels
from wsisum.data.splits import read_split, split_files
from wsisum.data.tasks import TaskSpec
from wsisum.errors import InputError, examples, positive_int
from wsisum.evaluate.results import FULL, RunLabel
from wsisum.models.mil import MIL_MODELS


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
