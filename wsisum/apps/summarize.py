"""`wsisum-summarize data.root=DIR sampler=NAME budget=K|auto out_dir=DIR`: write summary bags."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.data.bad_slides import check_on_bad
from wsisum.data.cohort import Cohort
from wsisum.data.layouts import layout_options
from wsisum.errors import budget_option, print_failures
from wsisum.summarize.jobs import RunReport
from wsisum.summarize.run import summarize_cohort


@report_input_errors
def summarize(cfg: DictConfig) -> RunReport:
    budget = budget_option(cfg.budget)
    stop_on_error = check_on_bad(str(cfg.data.get("on_bad_slide", "skip"))) == "error"
    sampler = hydra.utils.instantiate(cfg.sampler).named(cfg.get("sampler_name"))
    budget = sampler.check_budget(budget)  # budget=auto with a sampler that has no size of its own: one line
    cohort = Cohort(cfg.data.root, cfg.data.datasets, **layout_options(cfg.data))
    trainer = None
    if cfg.get("trainer"):  # trainer=ddp|ddp_sim|gpu: Lightning predict over devices / nodes
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=bool(cfg.progress))
    report = summarize_cohort(
        cohort,
        sampler,
        budget,
        cfg.out_dir,
        workers=int(cfg.workers),
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress),
        trainer=trainer,
        stop_on_error=stop_on_error,
        cache_dir=cfg.get("cache_dir"),
    )
    if trainer is not None and not trainer.is_global_zero:
        return report  # rank 0 reports for everyone
    print(
        f"{sampler.name} budget={cfg.budget}: {len(report.done)} summarized, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed in {report.seconds:.1f}s -> {cfg.out_dir}"
    )
    if report.failed:
        print_failures(report.failed.values(), f"{len(report.failed)} slide(s) failed:")
        raise SystemExit(1)
    return report


@hydra_app("summarize")
def main(cfg: DictConfig) -> None:
    summarize(cfg)


if __name__ == "__main__":
    main()
