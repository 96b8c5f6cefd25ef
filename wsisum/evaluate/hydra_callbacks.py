"""Hydra callbacks of `wsisum-evaluate`: aggregate a multirun's metrics when it ends, report failed jobs.

Registered in `configs/evaluate.yaml` under `hydra.callbacks`; runs in the process that launched
the sweep, after every job (local, joblib or SLURM) has finished.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wsisum.data.bad_slides import LEDGER_FILE, runs_with_bad_slides
from wsisum.errors import InputError, print_error
from wsisum.evaluate.aggregate import write_aggregate

log = logging.getLogger(__name__)
FAILED_FILE = "FAILED"


def failed_jobs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """Jobs of a sweep that recorded an input error: (job dir, message)."""
    return [(p.parent, p.read_text().strip()) for p in sorted(sweep_dir.glob(f"*/{FAILED_FILE}"))]


class AggregateMetrics(Callback):
    """On multirun end: aggregate.csv / aggregate.md / <metric>_vs_budget_<mil>.png in the sweep dir.

    `extra` adds runs made outside the sweep (e.g. the full-bag reference run's directory).
    Jobs that failed on bad input are listed and make the sweep exit with status 1 after aggregation.
    """

    def __init__(self, extra: Sequence[str] = (), metric: str = "test_auroc", enabled: bool = True):
        self.extra = [str(p) for p in extra or ()]
        self.metric = metric
        self.enabled = enabled

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = failed_jobs(sweep_dir) if sweep_dir.is_dir() else []
        try:
            written = write_aggregate([sweep_dir, *self.extra], sweep_dir, self.metric)
        except InputError as err:
            print_error(f"no aggregate written: {err}")
            written = {}
        for path in written.values():
            log.info("aggregate: %s", path)
        if written:
            print(f"aggregate of the sweep: {written['markdown']}", flush=True)
        partial = runs_with_bad_slides(sweep_dir)
        for job, n in partial:
            print_error(f"job {job.name} skipped {n} bad slide(s), listed in {job / LEDGER_FILE}")
        if failed:
            for job, msg in failed:
                print_error(f"job {job.name} failed: {msg}")
            print_error(f"{len(failed)} job(s) of the sweep failed")
        if failed or partial:
            raise SystemExit(1)
