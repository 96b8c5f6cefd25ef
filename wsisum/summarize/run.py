"""Summarize every slide of a cohort with one sampler: parallel, atomic per slide, resumable.

A finished summary is skipped on re-run (its file exists only once complete: temp + rename);
a bad slide is reported and the others go on; the caller gets the list of failures.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from wsisum.data.atomic import remove_stale_temps
from wsisum.data.bags import Bag, read_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import read_embedding
from wsisum.errors import InputError
from wsisum.sampling.base import Sampler, Selection
from wsisum.summarize.writer import existing_conflict, relative_source, summary_path, write_summary

log = logging.getLogger(__name__)


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

    @property
    def ok(self) -> bool:
        return not self.failed


def select_for_job(job: SlideJob, sampler: Sampler, budget: int | str) -> tuple[Bag, Selection]:
    """Read one slide (and its teachers, when the sampler needs them) and select its summary.
    Raises InputError naming the file; shared by the process-pool and the Lightning paths."""
    bag = read_bag(job.bag_path)
    context: dict[str, Any] = {"dataset": job.dataset}
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


def _init_worker() -> None:
    """One thread per worker process: the workers are the parallelism (no oversubscription)."""
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


def _run_one(job: SlideJob, sampler: Sampler, budget: int | str) -> tuple[str, str, str | None]:
    try:
        return job.slide_id, summarize_slide(job, sampler, budget), None
    except InputError as err:
        return job.slide_id, "failed", str(err)
    except Exception as err:  # a crash on one slide must not take the batch down; report it
        return job.slide_id, "failed", f"{job.bag_path}: unexpected {type(err).__name__}: {err}"


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


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]summarize"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def summarize_cohort(
    cohort: Cohort,
    sampler: Sampler,
    budget: int | str,
    out_dir: str | Path,
    *,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    trainer: Any = None,
    stop_on_error: bool = False,
    cache_dir: str | Path | None = None,
) -> RunReport:
    """Write one summary bag per slide under `out_dir`.

    `workers` > 0 uses that many CPU processes; a Lightning `trainer` (e.g. DDP over GPUs or nodes)
    runs the slides through `trainer.predict` instead. Both write the same files. A bad slide is
    reported and the rest go on, unless `stop_on_error` (process path: the slides in flight finish).
    `cache_dir` keeps what a sampler fits on the whole cohort (`Sampler.prepare`) for the next run.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        removed = remove_stale_temps(out_dir)  # only one process may clean, never while others write
        if removed:
            log.info("removed %d partial file(s) left by an interrupted run", removed)
    sampler.prepare(cohort, cache_dir)  # before the workers get their copy of the sampler
    if trainer is not None:
        from wsisum.summarize.predict import summarize_with_trainer  # predict builds on this module

        pre = RunReport()
        jobs = plan_jobs(cohort, out_dir, sampler, budget, overwrite, pre, include_done=True)
        report = summarize_with_trainer(jobs, sampler, budget, out_dir, trainer, overwrite)
        report.failed |= pre.failed
        report.seconds = time.perf_counter() - t0
        return report
    report = RunReport()
    jobs = plan_jobs(cohort, out_dir, sampler, budget, overwrite, report)
    if report.skipped:
        log.info("%d slide(s) already summarized, skipped", len(report.skipped))
    with _progress(progress) as bar:
        task = bar.add_task("slides", total=len(jobs), rate="")
        for sid, _status, err in _execute(jobs, sampler, budget, workers):
            if err is None:
                report.done.append(sid)
            else:
                report.failed[sid] = err
                bar.console.print(f"[red]failed[/red] {err}")
                if stop_on_error:
                    break
            done = len(report.done) + len(report.failed)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f} slides/s")
    report.seconds = time.perf_counter() - t0
    return report


def _execute(jobs: list[SlideJob], sampler: Sampler, budget: int | str, workers: int) -> Iterable[tuple]:
    if workers <= 0 or len(jobs) <= 1:
        for job in jobs:
            yield _run_one(job, sampler, budget)
        return
    # spawn, not fork: forking a process that already ran OpenMP (faiss, torch) can deadlock
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(jobs), os.cpu_count() or 1), mp_context=ctx, initializer=_init_worker
    ) as pool:
        pending = set()
        it = iter(jobs)
        # keep a bounded queue so memory holds ~2 bags per worker, whatever the cohort size
        for job in it:
            pending.add(pool.submit(_run_one, job, sampler, budget))
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_run_one, nxt, sampler, budget))
