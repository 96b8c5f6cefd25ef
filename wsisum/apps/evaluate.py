"""`wsisum-evaluate data.root=DIR task=NAME bags=full|DIR [mil=NAME] [folds=[0,1]] [engine=replicas seeds=[0,1,2]]`.

Downstream MIL evaluation. For each fold (and seed): train on train, select on val (best epoch +
early stopping on the task's monitor), test on test. Writes `metrics.csv` (task, sampler, budget,
mil, fold, seed, metric, value), predictions and `aggregate.md` in the run dir.

- `engine=lightning` (default): one Lightning fit per fold (any MIL model, DDP, loggers, checkpoints;
  one seed per run).
- `engine=replicas`: ABMIL only; every (fold, seed) pair is one replica and all train at once in
  this process (`wsisum.evaluate.protocol`), ~an order of magnitude faster on small bags; also
  writes `curves.csv` (per-epoch train/val loss and val AUROC of every replica). With `-m`, each job is one run and the
sweep writes `aggregate.csv`, `aggregate.md` and `auroc_vs_budget_<mil>.png` when it ends:

    wsisum-evaluate -m data.root=DIR task=brca_subtyping mil=abmil,transmil
    wsisum-evaluate -m data.root=DIR 'bags=SUMMARIES/${sampler_name}_${budget}' \\
        sampler_name=random,kmeans budget=16,64,256 'hydra.callbacks.aggregate.extra=[FULL_RUN_DIR]'
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.data.bad_slides import read_ledger, report_bad_slides
from wsisum.errors import InputError, print_error
from wsisum.evaluate.aggregate import aggregate, collect, markdown_table
from wsisum.evaluate.hydra_callbacks import FAILED_FILE
from wsisum.evaluate.protocol import check_engine, run_replicas
from wsisum.evaluate.runner import EvaluationResult, run_evaluation
from wsisum.evaluate.setup import is_multirun
from wsisum.runlock import named_run_dir_lock

log = logging.getLogger(__name__)
SHOWN = ("test_auroc", "test_balanced_accuracy", "test_f1_macro", "epoch_time_s", "peak_rss_mb", "patches_per_bag")


def _show(result: EvaluationResult) -> None:
    lab = result.label
    budget = "" if lab.budget is None else f", budget {lab.budget}"
    seeds = sorted({r.get("seed", 0) for r in result.rows})
    table = Table(title=f"{lab.task}: {lab.mil} on {lab.sampler} bags{budget} (folds {result.folds()}, seeds {seeds})")
    table.add_column("metric")
    table.add_column("mean ± std over replicates", justify="right")
    agg = aggregate(collect([result.out_dir / "metrics.csv"]))
    for m in SHOWN:
        row = agg[agg["metric"] == m]
        if not row.empty:
            r = row.iloc[0]
            table.add_row(m, f"{r['mean']:.4g}" + ("" if r["n"] < 2 else f" ± {r['std']:.2g}"))
    Console().print(table)


def evaluate(cfg: DictConfig) -> float:
    """Run the folds; returns the mean over replicates of `optimized_metric` (what an Optuna sweep maximises)."""
    result = run_replicas(cfg) if check_engine(cfg) == "replicas" else run_evaluation(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if not result.rows:  # a non-zero rank of a distributed run: rank 0 reports
        return float("nan")
    if not is_multirun():
        (out_dir / "aggregate.md").write_text(markdown_table(aggregate(collect([out_dir / "metrics.csv"]))))
        _show(result)
    log.info("metrics: %s", out_dir / "metrics.csv")
    report_bad_slides(out_dir, "evaluation")  # bad_slides.csv + one line per skipped slide
    return result.mean(str(cfg.optimized_metric))


@hydra_app("evaluate")
def main(cfg: DictConfig) -> float | None:
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # lightning 2.6 + torch 2.13 noise
    if not is_multirun():
        with named_run_dir_lock(cfg):  # a named run dir (hydra.run.dir=...) takes one run at a time
            value = report_input_errors(evaluate)(cfg)
            if read_ledger(cfg.paths.output_dir):
                raise SystemExit(1)  # metrics written without the bad slides; the run is not what was asked for
        return value
    # in a sweep a bad input fails its job only: one line, a FAILED marker, and the other jobs go on;
    # the aggregation callback lists failed jobs and exits non-zero at the end
    try:
        return evaluate(cfg)
    except InputError as err:
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / FAILED_FILE).write_text(f"{err}\n")
        print_error(err)
        return float("nan")


if __name__ == "__main__":
    main()
