"""One slide's job, from planning to its outcome: what both summarize paths (the process pool in
`run.py`, Lightning predict in `predict.py`) share, so they plan, select and fail the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsisum.data.bags import Bag, read_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import read_embedding
from wsisum.data.output_faults import disk_full_cause, where_full
from wsisum.errors import InputError
from wsisum.sampling.base import Sampler, Selection
from wsisum.summarize.writer import existing_conflict, relative_source, summary_path, write_summary


@dataclass(frozen=True)
class SlideJob:
    slide_id: str
    dataset: str
    bag_path: str
    out_path: str
    source: str
    teacher_paths: tuple[tuple[str, str | None], ...] = ()


@dataclass
class RunReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    clusters: dict[str, int] = field(default_factory=dict)  # clustering cache: computed / reused

    @property
    def ok(self) -> bool:
        return not self.failed


def select_for_job(job: SlideJob, sampler: Sampler, budget: int | str) -> tuple[Bag, Selection]:
    """Read one slide (and its teachers, when the sampler needs them) and select its summary.
    Raises InputError naming the file; shared by the process-pool and the Lightning paths."""
    bag = read_bag(job.bag_path)
    context: dict[str, Any] = {"dataset": job.dataset, "source": job.bag_path}
    if sampler.needs_teachers:
        context["teachers"] = {t: (read_embedding(p) if p else None) for t, p in job.teacher_paths}
        context["teacher_paths"] = dict(job.teacher_paths)  # to name a bad teacher file
    try:
        sel = sampler.select(bag.features, budget, slide_id=job.slide_id, coords=bag.coords, **context)
    except InputError as err:
        if err.path is None:  # sampler errors do not know the file: name it here
            raise InputError(job.bag_path, err.problem) from None
        raise
    return bag, sel


def summarize_slide(job: SlideJob, sampler: Sampler, budget: int | str) -> str:
    """Summarize one slide; returns 'done'. Raises InputError for bad input."""
    bag, sel = select_for_job(job, sampler, budget)
    write_summary(job.out_path, bag, sel, sampler.recipe(budget), job.source)
    return "done"


DISK_FULL = "disk full"  # the outcome that stops a run: no later slide could be written either


def slide_outcome(job: SlideJob, err: BaseException) -> tuple[str, str]:
    """(status, one line) for a slide that raised: every exception is that slide's failure (both
    paths, so one odd slide never takes a batch or a DDP job down), except a full disk."""
    full = disk_full_cause(err)
    if full is not None:
        return DISK_FULL, where_full(full, Path(job.out_path).parent)
    if isinstance(err, InputError):
        return "failed", str(err)
    detail = " ".join(f"unexpected {type(err).__name__}: {err}".split())
    return "failed", f"{job.bag_path}: {detail}"


def plan_jobs(
    cohort: Cohort,
    out_dir: str | Path,
    sampler: Sampler,
    budget: int | str,
    overwrite: bool,
    report: RunReport,
    include_done: bool = False,
) -> list[SlideJob]:
    """Jobs for slides without a finished summary (all slides with `include_done`, for ranks that
    skip on their own); a summary with another recipe is a failure."""
    wanted = sampler.recipe(budget)
    jobs = []
    for sid, rec in cohort.slides.items():
        out = summary_path(out_dir, rec.dataset, sid)
        if not overwrite and not include_done:
            finished, problem = existing_conflict(out, wanted)
            if problem is not None:
                report.failed[sid] = problem
                continue
            if finished:
                report.skipped.append(sid)
                continue
        source = relative_source(rec.bag_path, cohort.root)
        teachers = ()
        if sampler.needs_teachers:
            paths = [(t, cohort.embedding_path(sid, t)) for t in sampler.teacher_names]
            teachers = tuple((t, str(p) if p.is_file() else None) for t, p in paths)
        jobs.append(SlideJob(sid, rec.dataset, str(rec.bag_path), str(out), source, teachers))
    return jobs
