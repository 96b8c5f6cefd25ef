"""Teacher cosine of a summary: cos(the pretrained summarizer's slide outputs on the kept patches, the
slide's teacher target), scored exactly as `sampler=wsisum` scores a candidate (`CandidateScorer`).

This is wsisum's own search objective, so a wsisum summary scores high by construction: the report
shows it, it is not evidence. The reference row (`full`) scores the whole bag, or a seeded random
subset of `full_max_patches` where the bag is larger (the model is trained on pools of a few hundred
patches, and attention over 10^4 tokens would cost minutes per slide on a CPU).
Positions are grid units from the full bag's top-left, the same for every sampler's summary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import read_embedding
from wsisum.errors import InputError
from wsisum.report.rundir import RunDir
from wsisum.run_layout import TRAIN_DIR, checkpoint_dir, chosen_checkpoint
from wsisum.seeding import rng_for

log = logging.getLogger(__name__)

FULL_MAX_PATCHES = 512


def find_checkpoint(run: RunDir) -> Path | None:
    """The study's summarizer: the checkpoint a wsisum summary names (attr `checkpoint`) when it is in
    RUN_DIR/train/checkpoints/, else the pipeline's choice (last best-*.ckpt, else last.ckpt, else the
    newest); None when there is none."""
    ckpt_dir = checkpoint_dir(run.root / TRAIN_DIR)
    found = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if not found:
        return None
    from wsisum.data.hdf5 import open_h5

    for s in run.summary_sets:
        if s.sampler.split("-")[0] != "wsisum" or not s.files:
            continue
        try:
            with open_h5(next(iter(s.files.values())).path) as f:
                named = f.attrs.get("checkpoint")
        except OSError:
            continue
        named = named.decode() if isinstance(named, bytes) else named
        if named and (ckpt_dir / str(named)).is_file():
            return ckpt_dir / str(named)
    chosen = chosen_checkpoint(run.root / TRAIN_DIR)
    return chosen if chosen.is_file() else max(found, key=lambda p: p.stat().st_mtime)


class TeacherCheck:
    """Loads the checkpoint once; `score` gives the teacher cosine of several subsets of one slide."""

    def __init__(
        self,
        ckpt_path: str | Path,
        cohort_root: Path,
        device: str = "auto",
        full_max_patches: int = FULL_MAX_PATCHES,
        layout: dict | None = None,
    ):
        from wsisum.summarize.scorer import load_summarizer, resolve_device  # lazy: Lightning is slow to import

        self.ckpt_path, self.cohort_root = Path(ckpt_path), cohort_root
        self.cohort = Cohort(cohort_root, **(layout or {}))  # where the teachers sit, in any layout
        self.device = resolve_device(device)
        self.module = load_summarizer(self.ckpt_path, self.device)
        self.feature_dim = int(self.module.hparams.feature_dim)
        self.full_max_patches = int(full_max_patches)

    def teachers(self, dataset: str, slide_id: str) -> dict[str, np.ndarray | None]:
        """The slide's raw teacher embeddings by the checkpoint's teacher names (None where missing)."""
        out: dict[str, np.ndarray | None] = {}
        dims = self.module.hparams.teacher_dims
        for t in self.module.teacher_names:
            p = self.cohort.teacher_dir(dataset, t) / f"{slide_id}.h5"
            out[t] = read_embedding(p) if p.is_file() else None
            if out[t] is not None and out[t].shape[0] != dims[t]:
                raise InputError(p, f"dim {out[t].shape[0]}, but the checkpoint {self.ckpt_path} has {dims[t]} for {t}")
        return out

    def full_subset(self, slide_id: str, n: int) -> np.ndarray:
        if n <= self.full_max_patches:
            return np.arange(n)
        return np.sort(rng_for(0, slide_id, "teacher-cosine-full").choice(n, self.full_max_patches, replace=False))

    def score(
        self,
        dataset: str,
        slide_id: str,
        features: np.ndarray,
        coords: np.ndarray | None,
        subsets: Sequence[np.ndarray],
    ) -> tuple[list[float], float] | None:
        """(teacher cosine of each subset of bag rows, of the full-bag reference); None when the slide
        has no embedding of any of the checkpoint's teachers. Subsets of one size share a forward."""
        import torch

        from wsisum.sampling.pool import grid_positions
        from wsisum.summarize.scorer import CandidateScorer

        if features.shape[1] != self.feature_dim:
            raise InputError(
                None, f"features of {features.shape[1]} dims, the checkpoint {self.ckpt_path} takes {self.feature_dim}"
            )
        teachers = self.teachers(dataset, slide_id)
        if all(e is None for e in teachers.values()):
            return None
        n = len(features)
        c = torch.from_numpy(np.asarray(coords)) if coords is not None else torch.full((n, 2), -1)
        scorer = CandidateScorer(
            self.module, torch.from_numpy(np.asarray(features, dtype=np.float32)), grid_positions(c), self.device
        )
        scores = [float("nan")] * len(subsets)
        by_size: dict[int, list[int]] = {}
        for i, idx in enumerate(subsets):
            by_size.setdefault(len(idx), []).append(i)
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            # a few hundred tokens per forward: intra-op threads gain little alone and, on a busy
            # machine, cost 5-50x in waits (measured on 2 shared cores: 0.65 s vs 14 ms a forward)
            torch.set_num_threads(1)
        try:
            scorer.set_teacher_target(teachers)
            for size, members in by_size.items():
                if size == 0:
                    continue
                batch = torch.from_numpy(np.stack([np.asarray(subsets[i], dtype=np.int64) for i in members]))
                for i, v in zip(members, scorer(batch).tolist()):
                    scores[i] = float(v)
            full = float(scorer(torch.from_numpy(self.full_subset(slide_id, n))[None])[0])
        finally:
            torch.set_num_threads(threads)
        return scores, full
