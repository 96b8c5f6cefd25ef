"""Summarization on many GPUs / nodes: Lightning `predict` over slides + a prediction writer.

Same outputs as the process-pool path (`run.py`): each rank summarizes its share of the slides and
the writer saves every summary atomically; finished slides were already dropped from the job list,
so a resubmitted job only does what is missing. Failures are written per rank and merged at the end.
Failures follow the process path's policy (`jobs.slide_outcome`): every exception is that slide's
failure; with `stop_on_error` the failing rank leaves a stop flag beside the outcomes, and every rank
takes no further slide once it sees it (a file, so it reaches ranks on other nodes without a
collective); a full disk stops the rank at once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from wsisum.data.output_faults import disk_full_cause, disk_is_full, quiet_h5py_dealloc, where_full
from wsisum.errors import DiskFullError
from wsisum.sampling.base import Sampler
from wsisum.summarize.jobs import DISK_FULL, RunReport, SlideJob, select_for_job, slide_outcome
from wsisum.summarize.writer import existing_conflict, write_summary

OUTCOMES_DIR = ".wsisum_outcomes"  # per-rank jsonl of done/skipped/failed, merged by the launcher
STOP_FLAG = "stop"  # in OUTCOMES_DIR: a slide failed under stop_on_error; no rank starts another
_RANK = {"skipped": 0, "done": 1, "failed": 2}  # which outcome wins when two ranks report one slide


class JobDataset(Dataset):
    def __init__(self, jobs: Sequence[SlideJob]):
        self.jobs = list(jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> SlideJob:
        return self.jobs[i]


class SummarizePredictor(L.LightningModule):
    """predict_step = read one bag, run the sampler; the writer saves the result."""

    def __init__(
        self, sampler: Sampler, budget: int | str, overwrite: bool = False, stop_flag: str | Path | None = None
    ):
        super().__init__()
        self.sampler, self.budget, self.overwrite = sampler, sampler.check_budget(budget), overwrite
        self.stop_flag = None if stop_flag is None else Path(stop_flag)  # set with stop_on_error
        self.recipe = sampler.recipe(budget)
        self.register_buffer("_device_anchor", torch.zeros(1))  # lets Lightning report this rank's device

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # slide jobs (paths), not tensors: the sampler moves what it needs

    def on_predict_start(self) -> None:
        quiet_h5py_dealloc()  # on every rank: spawned ranks do not inherit the app's hook
        if hasattr(self.sampler, "device"):  # each rank uses its own GPU, not cuda:0
            self.sampler.device = str(self.device)

    def predict_step(self, batch: list[SlideJob], batch_idx: int) -> dict[str, Any]:
        (job,) = batch
        if self.stop_flag is not None and self.stop_flag.exists():
            return {"job": job, "stopped": True}
        if not self.overwrite:
            finished, problem = existing_conflict(job.out_path, self.recipe)
            if problem is not None:
                return {"job": job, "error": problem}
            if finished:
                return {"job": job, "skipped": True}
        try:
            bag, sel = select_for_job(job, self.sampler, self.budget)
        except Exception as err:
            status, line = slide_outcome(job, err)
            if status == DISK_FULL:
                raise DiskFullError(line) from None
            return {"job": job, "error": line}
        return {"job": job, "bag": bag, "selection": sel}


class SummaryWriter(BasePredictionWriter):
    """Writes each predicted summary at once (atomic), so memory holds one bag per rank."""

    def __init__(self, out_dir: str | Path, recipe: dict[str, Any], stop_on_error: bool = False):
        super().__init__(write_interval="batch")
        self.out_dir, self.recipe, self.stop_on_error = Path(out_dir), recipe, stop_on_error

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if prediction.get("stopped"):
            return  # not run: neither done nor failed
        job = prediction["job"]
        error, status = prediction.get("error"), "skipped" if prediction.get("skipped") else "done"
        if error is None and status == "done":
            try:
                write_summary(job.out_path, prediction["bag"], prediction["selection"], self.recipe, job.source)
            except Exception as err:
                if disk_full_cause(err) is not None:
                    raise DiskFullError(where_full(err, Path(job.out_path).parent)) from None
                error = f"{job.out_path}: cannot write ({' '.join(str(err).split())})"
        outcomes = self.out_dir / OUTCOMES_DIR
        outcomes.mkdir(parents=True, exist_ok=True)
        with open(outcomes / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(
                json.dumps({"slide_id": job.slide_id, "status": "failed" if error else status, "error": error}) + "\n"
            )
        if error and self.stop_on_error:
            (outcomes / STOP_FLAG).touch()


def _collate(batch: list[SlideJob]) -> list[SlideJob]:
    return batch


def summarize_with_trainer(
    jobs: Sequence[SlideJob],
    sampler: Sampler,
    budget: int | str,
    out_dir: str | Path,
    trainer: L.Trainer,
    overwrite: bool = False,
    stop_on_error: bool = False,
) -> RunReport:
    """Run every slide's job through `trainer.predict` (DDP shards them over ranks; each rank skips
    finished slides itself, so all ranks see the same job list) and merge the per-rank outcomes."""
    out_dir = Path(out_dir)
    outcome_dir = out_dir / OUTCOMES_DIR
    if trainer.is_global_zero and outcome_dir.exists():
        shutil.rmtree(outcome_dir)
    predictor = SummarizePredictor(sampler, budget, overwrite, outcome_dir / STOP_FLAG if stop_on_error else None)
    trainer.callbacks.append(SummaryWriter(out_dir, predictor.recipe, stop_on_error))
    loader = DataLoader(JobDataset(jobs), batch_size=1, shuffle=False, collate_fn=_collate)
    try:
        trainer.predict(predictor, loader, return_predictions=False)
    except Exception as err:  # ddp_spawn hands a rank's DiskFullError back as text; HDF5 may crash a rank
        if disk_full_cause(err) is None and not disk_is_full(out_dir):
            raise
        raise DiskFullError(out_dir, "finished summaries are complete, the rest were not started") from None
    report = RunReport()
    stopped = (outcome_dir / STOP_FLAG).exists()
    outcomes: dict[str, dict] = {}
    for p in sorted(outcome_dir.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            rec = json.loads(line)
            # DistributedSampler repeats a slide or two to even out the ranks: the repeat finds the summary
            # the other rank wrote and says "skipped"; what happened first (done / failed) is the outcome
            prev = outcomes.get(rec["slide_id"])
            if prev is None or _RANK[rec["status"]] > _RANK[prev["status"]]:
                outcomes[rec["slide_id"]] = rec
    for job in jobs:
        rec = outcomes.get(job.slide_id)
        if rec is None and stopped:
            continue  # never started: stop_on_error stopped the run first
        if rec is None:
            report.failed[job.slide_id] = f"{job.out_path}: no rank reported this slide"
        elif rec["status"] == "failed":
            report.failed[job.slide_id] = rec["error"]
        else:
            (report.done if rec["status"] == "done" else report.skipped).append(job.slide_id)
    if trainer.is_global_zero:
        shutil.rmtree(outcome_dir, ignore_errors=True)
    return report
