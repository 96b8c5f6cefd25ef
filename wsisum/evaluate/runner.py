"""`wsisum-evaluate engine=lightning`: every requested fold in turn (`fit.evaluate_fold`), its rows
appended to the run's `metrics.csv` after each fold, so a killed run keeps the folds it finished.

The steps live in their own modules: `setup` (task, folds, run label), `trainers` (the Trainers of a
fold), `fit` (one fold), `scoring` (its metric values and cost); predictions and metrics files in
`results`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from wsisum.errors import InputError
from wsisum.evaluate.fit import evaluate_fold
from wsisum.evaluate.results import METRICS_FILE, RunLabel, rows_for_fold, write_metrics
from wsisum.evaluate.setup import prepare_run


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
