"""`wsisum-retrieve data.root=DIR task=NAME bags=full|DIR [distances=[median_min,mean_cosine]] [max_patches_per_slide=auto]`.

Leave-one-case-out slide retrieval: every labelled slide of the task queries all slides of other
cases; the majority label of its nearest 1/3/5 is its prediction (see `wsisum.retrieve.metrics`).
Writes `metrics.csv` (wsisum-evaluate's schema, mil = retrieval_<distance>), `predictions.csv` and
`aggregate.md` in the run dir; the index of the bags is kept in `index_dir` and reused.

From another app (as `wsisum-pipeline` runs its stages):

    from wsisum.apps.retrieve import retrieve
    rcfg = compose_stage("retrieve", [f"data.root={root}", f"task={task}", f"bags={summary_dir}",
                                      f"index_dir={run_dir}/cache/retrieval", f"paths.output_dir={out}"])
    retrieve(rcfg)          # raises InputError on bad input; wrap with report_input_errors for one line

A sweep aggregates like wsisum-evaluate's (aggregate.md and majority_vote_at_5_vs_budget_<mil>.png):

    wsisum-retrieve -m data.root=DIR task=syn_brca 'bags=SUMMARIES/${sampler_name}_${budget}' \\
        sampler_name=random,kmeans budget=16,64 'hydra.callbacks.aggregate.extra=[FULL_RUN_DIR]'
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.data.bad_slides import read_ledger, report_bad_slides
from wsisum.errors import InputError, print_error
from wsisum.evaluate.aggregate import aggregate, collect, markdown_table
from wsisum.evaluate.hydra_callbacks import FAILED_FILE
from wsisum.evaluate.setup import is_multirun
from wsisum.retrieve.run import RetrievalResult, run_retrieval

log = logging.getLogger(__name__)
SHOWN = (
    "test_majority_vote_at_1",
    "test_majority_vote_at_3",
    "test_majority_vote_at_5",
    "test_f1_macro_at_5",
    "test_map_at_5",
    "query_time_s",
    "patches_per_bag",
)


def _show(result: RetrievalResult) -> None:
    first = next(iter(result.labels.values()))
    budget = "" if first.budget is None else f", budget {first.budget}"
    table = Table(title=f"{first.task}: retrieval on {first.sampler} bags{budget}")
    table.add_column("metric")
    for distance in result.labels:
        table.add_column(distance, justify="right")
    for m in SHOWN:
        table.add_row(m, *(f"{result.value(d, m):.4g}" for d in result.labels))
    Console().print(table)


def retrieve(cfg: DictConfig) -> RetrievalResult:
    """Run the searches; metrics.csv, predictions.csv and aggregate.md land in the run dir."""
    result = run_retrieval(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if not is_multirun():
        (out_dir / "aggregate.md").write_text(
            markdown_table(aggregate(collect([out_dir / "metrics.csv"])), SHOWN), encoding="utf-8"
        )
        _show(result)
    log.info("metrics: %s", out_dir / "metrics.csv")
    report_bad_slides(out_dir, "retrieval")  # bad_slides.csv + one line per skipped slide
    return result


@hydra_app("retrieve")
def main(cfg: DictConfig) -> None:
    if not is_multirun():
        report_input_errors(retrieve)(cfg)
        if read_ledger(cfg.paths.output_dir):
            raise SystemExit(1)  # metrics written without the bad slides; the run is not what was asked for
        return
    try:  # in a sweep a bad input fails its job only (a FAILED marker); the callback lists them at the end
        retrieve(cfg)
    except InputError as err:
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / FAILED_FILE).write_text(f"{err}\n")
        print_error(err)


if __name__ == "__main__":
    main()
