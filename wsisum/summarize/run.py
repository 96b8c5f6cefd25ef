"""Summarize every slide of a cohort with one sampler: parallel, atomic per slide, resumable.

A finished summary is skipped on re-run (its file exists only once complete: temp + rename);
a bad slide is reported and the others go on; the caller gets the list of failures.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from wsisum.data.atomic import remove_stale_temps
from wsisum.data.cohort import Cohort
from wsisum.data.output_faults import check_writable, disk_is_full, quiet_h5py_dealloc
from wsisum.errors import DiskFullError, InputError
from wsisum.progress import item_bar, print_line
from wsisum.run_layout import CLUSTERS_DIR
from wsisum.sampling.base import Sampler
from wsisum.sampling.cluster_cache import STATS, ClusterStore, format_stats, stats_since, stats_snapshot
from wsisum.summarize.jobs import DISK_FULL, RunReport, SlideJob, plan_jobs, slide_outcome, summarize_slide

log = logging.getLogger(__name__)


def _init_worker() -> None:
    """One thread per worker process: the workers are the parallelism (no oversubscription)."""
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    quiet_h5py_dealloc()


def _run_one(job: SlideJob, sampler: Sampler, budget: int | str) -> tuple[str, str, str | None]:
    try:
        return job.slide_id, summarize_slide(job, sampler, budget), None
    except Exception as err:
        return (job.slide_id, *slide_outcome(job, err))


def _run_in_worker(job: SlideJob, sampler: Sampler, budget: int | str) -> tuple[tuple, dict[str, int]]:
    """One slide in a worker process, with what it computed and reused of the clustering cache."""
    before = stats_snapshot()
    return _run_one(job, sampler, budget), stats_since(before)


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
    `cache_dir` keeps what a sampler fits on the whole cohort (`Sampler.prepare`) and every slide's
    clustering (`cache_dir/clusters`, shared with training and the other samplers) for the next run.
    """
    t0 = time.perf_counter()
    out_dir = prepare_output(cohort, sampler, out_dir, cache_dir)
    before = stats_snapshot()
    sampler.prepare(cohort, cache_dir)  # before the workers get their copy of the sampler
    if trainer is not None:
        report = summarize_on_trainer(cohort, sampler, budget, out_dir, trainer, overwrite, stop_on_error)
    else:
        report = summarize_in_pool(cohort, sampler, budget, out_dir, workers, overwrite, progress, stop_on_error)
    report.seconds = time.perf_counter() - t0
    report.clusters = stats_since(before)  # with a trainer: this rank's
    if report.clusters and trainer is None:
        log.info("clustering cache: %s", format_stats(report.clusters))
    return report


def prepare_output(cohort: Cohort, sampler: Sampler, out_dir: str | Path, cache_dir: str | Path | None) -> Path:
    """Check both directories can be written, clean temps of an interrupted run (one process only,
    never while others write), and point the sampler at the study's clustering cache."""
    out_dir = check_writable(out_dir, "summary directory")
    if cache_dir is not None:
        check_writable(cache_dir, "cache directory")
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        removed = remove_stale_temps(out_dir)
        if removed:
            log.info("removed %d partial file(s) left by an interrupted run", removed)
    if cache_dir is not None:
        sampler.use_clusters(ClusterStore(Path(cache_dir) / CLUSTERS_DIR))
    return out_dir


def summarize_on_trainer(
    cohort: Cohort,
    sampler: Sampler,
    budget: int | str,
    out_dir: Path,
    trainer: Any,
    overwrite: bool,
    stop_on_error: bool,
) -> RunReport:
    """Every slide through `trainer.predict` (GPUs, nodes, DDP)."""
    # Lightning only with a trainer: the pool's spawned workers import this module and start faster
    from wsisum.summarize.predict import summarize_with_trainer

    pre = RunReport()
    jobs = plan_jobs(cohort, out_dir, sampler, budget, overwrite, pre, include_done=True)
    report = summarize_with_trainer(jobs, sampler, budget, out_dir, trainer, overwrite, stop_on_error)
    report.failed |= pre.failed
    return report


def summarize_in_pool(
    cohort: Cohort,
    sampler: Sampler,
    budget: int | str,
    out_dir: Path,
    workers: int,
    overwrite: bool,
    progress: bool,
    stop_on_error: bool,
) -> RunReport:
    """Every slide in this process (`workers` 0) or in a pool of worker processes, with a progress
    bar; a full disk stops the run at once with no temp file left behind."""
    report = RunReport()
    jobs = plan_jobs(cohort, out_dir, sampler, budget, overwrite, report)
    if report.skipped:
        log.info("%d slide(s) already summarized, skipped", len(report.skipped))
    disk_full = None
    bar = item_bar(len(jobs), "summarize", enabled=progress)
    with bar as advance, contextlib.closing(_execute(jobs, sampler, budget, workers)) as outcomes:
        for sid, status, err in outcomes:
            if status == DISK_FULL:
                disk_full = err
                break
            if err is None:
                report.done.append(sid)
            else:
                report.failed[sid] = err
                print_line(f"[red]failed[/red] {err}")
                if stop_on_error:
                    break
            advance()
    if disk_full is not None:  # the pool is shut down (closing above): no writer is left to clean after
        remove_stale_temps(out_dir)
        total = len(jobs) + len(report.skipped)
        raise DiskFullError(disk_full, f"{len(report.done) + len(report.skipped)} of {total} slides done")
    return report


def _execute(jobs: list[SlideJob], sampler: Sampler, budget: int | str, workers: int) -> Iterable[tuple]:
    if workers <= 0 or len(jobs) <= 1:
        for job in jobs:
            yield _run_one(job, sampler, budget)
        return
    # spawn, not fork: forking a process that already ran OpenMP (faiss, torch) can deadlock
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs), os.cpu_count() or 1), mp_context=ctx, initializer=_init_worker
    )
    try:
        pending: dict = {}  # future -> its job (the job names the directory of a worker that died)
        it = iter(jobs)
        # keep a bounded queue so memory holds ~2 bags per worker, whatever the cohort size
        for job in it:
            pending[pool.submit(_run_in_worker, job, sampler, budget)] = job
            if len(pending) >= 2 * workers:
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = pending.pop(fut)
                try:
                    outcome, counts = fut.result()
                    STATS.update(counts)  # the workers' clustering work counts as this run's
                except BrokenProcessPool:
                    where = Path(job.out_path).parent
                    if disk_is_full(where):  # HDF5 can crash on a failed write
                        yield job.slide_id, DISK_FULL, str(where)
                        return
                    raise InputError(
                        None,
                        "a summarize worker process died (killed, or out of memory); re-run to resume, "
                        "with fewer workers if memory is short",
                    ) from None
                yield outcome
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(_run_in_worker, nxt, sampler, budget)] = nxt
    finally:  # also when the caller stops early (stop_on_error, a full disk): queued slides never start
        pool.shutdown(wait=True, cancel_futures=True)
