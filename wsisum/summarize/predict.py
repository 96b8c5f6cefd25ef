"""Summarization on many GPUs / nodes: Lightning `predict` over slides + a prediction writer.

Same outputs as the process-pool path (`run.py`): each rank summarizes its share of the slides and
the writer saves every summary atomically; finished slides were already dropped from the job list,
so a resubmitted job only does what is missing. Failures are written per rank and merged at the end.
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

from wsisum.errors import InputError
from wsisum.sampling.base import Sampler
from wsisum.summarize.run import RunReport, SlideJob, select_for_job
from wsisum.summarize.writer import existing_conflict, write_summary

OUTCOMES_DIR = ".wsisum_outcomes"  # per-rank jsonl of done/skipped/failed, merged by the launcher
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

    def __init__(self, sampler: Sampler, budget: int | str, overwrite: bool = False):
        super().__init__()
        self.sampler, self.budget, self.overwrite = sampler, sampler.check_budget(budget), overwrite
        self.recipe = sampler.recipe(budget)
        self.register_buffer("_device_anchor", torch.zeros(1))  # lets Lightning report this rank's device

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # slide jobs (paths), not tensors: the sampler moves what it needs

    def on_predict_start(self) -> None:
        if hasattr(self.sampler, "device"):  # each rank uses its own GPU, not cuda:0
            self.sampler.device = str(self.device)

    def predict_step(self, batch: list[SlideJob], batch_idx: int) -> dict[str, Any]:
        (job,) = batch
        if not self.overwrite:
            finished, problem = existing_conflict(job.out_path, self.recipe)
            if problem is not None:
                return {"job": job, "error": problem}
            if finished:
                return {"job": job, "skipped": True}
        try:
            bag, sel = select_for_job(job, self.sampler, self.budget)
        except InputError as err:
            return {"job": job, "error": str(err)}
        return {"job": job, "bag": bag, "selection": sel}


class SummaryWriter(BasePredictionWriter):
    """Writes each predicted summary at once (atomic), so memory holds one bag per rank."""

    def __init__(self, out_dir: str | Path, recipe: dict[str, Any]):
        super().__init__(write_interval="batch")
        self.out_dir, self.recipe = Path(out_dir), recipe

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        job = prediction["job"]
        error, status = prediction.get("error"), "skipped" if prediction.get("skipped") else "done"
        if error is None and status == "done":
            try:
                write_summary(job.out_path, prediction["bag"], prediction["selection"], self.recipe, job.source)
            except OSError as err:
                error = f"{job.out_path}: cannot write ({err})"
        path = self.out_dir / OUTCOMES_DIR / f"rank{trainer.global_rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(
                json.dumps({"slide_id": job.slide_id, "status": "failed" if error else status, "error": error}) + "\n"
            )


def _collate(batch: list[SlideJob]) -> list[SlideJob]:
    return batch


def summarize_with_trainer(
    jobs: Sequence[SlideJob],
    sampler: Sampler,
    budget: int | str,
    out_dir: str | Path,
    trainer: L.Trainer,
    overwrite: bool = False,
) -> RunReport:
    """Run every slide's job through `trainer.predict` (DDP shards them over ranks; each rank skips
    finished slides itself, so all ranks see the same job list) and merge the per-rank outcomes."""
    out_dir = Path(out_dir)
    outcome_dir = out_dir / OUTCOMES_DIR
    if trainer.is_global_zero and outcome_dir.exists():
        shutil.rmtree(outcome_dir)
    predictor = SummarizePredictor(sampler, budget, overwrite)
    trainer.callbacks.append(SummaryWriter(out_dir, predictor.recipe))
    loader = DataLoader(JobDataset(jobs), batch_size=1, shuffle=False, collate_fn=_collate)
    trainer.predict(predictor, loader, return_predictions=False)
    report = RunReport()
    outcomes: dict[str, dict] = {}
    for p in sorted(outcome_dir.glob("*.jsonl")) if outcome_dir.exists() else []:
        for line in p.read_text().splitlines():
            rec = json.loads(line)
            # DistributedSampler repeats a slide or two to even out the ranks: the repeat finds the summary
            # the other rank wrote and says "skipped"; what happened first (done / failed) is the outcome
            prev = outcomes.get(rec["slide_id"])
            if prev is None or _RANK[rec["status"]] > _RANK[prev["status"]]:
                outcomes[rec["slide_id"]] = rec
    for job in jobs:
        rec = outcomes.get(job.slide_id)
        if rec is None:
            report.failed[job.slide_id] = f"{job.out_path}: no rank reported this slide"
        elif rec["status"] == "failed":
            report.failed[job.slide_id] = rec["error"]
        else:
            (report.done if rec["status"] == "done" else report.skipped).append(job.slide_id)
    if trainer.is_global_zero:
        shutil.rmtree(outcome_dir, ignore_errors=True)
    return report
