"""`wsisum-check data.root=DIR [task=NAME] [teachers=NAME]`: validate a cohort before a long run.

One table (slides, patches, D, dtypes, teachers, labels, splits), then one line per problem, then one
verdict line; exit 1 when a later stage would fail. Headers only: seconds for 10,000 slides.
"""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.data.check import CohortCheck, check_cohort, render_table
from wsisum.data.layouts import layout_options
from wsisum.data.tasks import TaskSpec
from wsisum.errors import print_error


def _task_choice() -> str | None:
    return HydraConfig.get().runtime.choices.get("task") if HydraConfig.initialized() else None


def run_check(cfg: DictConfig) -> CohortCheck:
    """Scan the cohort of `cfg.data` (and `cfg.task`, `cfg.teachers` when set); prints nothing, so the
    pipeline can call it before its first stage."""
    task = None
    if cfg.get("task"):
        task = TaskSpec.from_config(OmegaConf.to_container(cfg.task, resolve=True), cfg.data.root, _task_choice())
    names = cfg.teachers.get("names") if cfg.get("teachers") else None
    return check_cohort(
        cfg.data.root,
        cfg.data.get("datasets"),
        task=task,
        teachers=list(names) if names else None,
        progress=bool(cfg.get("progress", False)),
        workers=None if cfg.get("workers") is None else int(cfg.workers),
        **layout_options(cfg.data),
    )


@report_input_errors
def check(cfg: DictConfig) -> CohortCheck:
    report = run_check(cfg)
    if report.rows:
        Console().print(render_table(report, title=f"wsisum-check {cfg.data.root}"))
    sys.stdout.flush()
    for problem in sorted(report.problems, key=lambda p: not p.fatal):  # what must be fixed first, in scan order
        print_error(problem.line(), prefix=None)
    if report.fatal:
        print_error(report.summary(), prefix=None)
        raise SystemExit(1)
    print(report.summary(), flush=True)
    return report


@hydra_app("check")
def main(cfg: DictConfig) -> None:
    check(cfg)


if __name__ == "__main__":
    main()
