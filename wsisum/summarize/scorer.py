"""Scoring candidate summaries with the pretrained student: cos(slide outputs, target) for many
subsets per forward, and the random search of `selection=random` (and `faithful=True`, the original's
single mask). Loaded models are kept per process and device, so a worker loads a checkpoint once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wsisum.checkpoints import hyper_parameters, restore_module
from wsisum.errors import InputError
from wsisum.summarize.selection import refine_by_swaps

if TYPE_CHECKING:  # Lightning only where a model scores: the default sampler's workers start 3 s faster
    from wsisum.lit.pretrain import SummarizerPretraining

log = logging.getLogger(__name__)
_MODELS: dict[tuple[str, str], SummarizerPretraining] = {}  # one loaded model per process and device


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_summarizer(ckpt_path: str | Path, device: torch.device) -> SummarizerPretraining:
    from wsisum.lit.pretrain import SummarizerPretraining

    key = (str(ckpt_path), str(device))
    if key not in _MODELS:
        module = restore_module(SummarizerPretraining, ckpt_path, map_location=device)
        _MODELS[key] = module.eval().requires_grad_(False)
    return _MODELS[key]


def checkpoint_teachers(ckpt_path: str | Path) -> list[str]:
    """Teacher names a checkpoint was distilled from (read without building the model)."""
    path = Path(ckpt_path)
    hp = hyper_parameters(path)
    if not isinstance(hp.get("teacher_dims"), dict):
        raise InputError(path, "not a wsisum-train checkpoint (no teacher_dims in its hyper-parameters)")
    return list(hp["teacher_dims"])


class CandidateScorer:
    """Scores candidate subsets of one slide's pool: cos(student slide outputs, target), batched."""

    def __init__(self, module: SummarizerPretraining, feats: torch.Tensor, pos: torch.Tensor, device: torch.device):
        self.module, self.device = module, device
        self.feats, self.pos = feats.to(device), pos.to(device)
        self.autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.n_scored = 0

    def _outputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        x, p = self.feats[idx], self.pos[idx]
        ones = torch.ones(idx.shape, dtype=torch.bool, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.module.model(x, ones, p, ones, reconstruct=False)
        return {k: v.float() for k, v in out["distill"].items()}

    @torch.inference_mode()
    def set_teacher_target(self, teachers: dict[str, np.ndarray | None]) -> None:
        names = self.module.teacher_names
        dims = self.module.hparams.teacher_dims
        emb, present = {}, {}
        for t in names:
            e = teachers.get(t)
            present[t] = torch.tensor([e is not None], device=self.device)
            emb[t] = torch.as_tensor(
                e if e is not None else np.zeros(dims[t]), dtype=torch.float32, device=self.device
            )[None]
        self.targets = self.module.targets(emb, present)

    @torch.inference_mode()
    def set_self_target(self) -> None:
        """Teacher-free: the model's own slide outputs on the whole pool are the target."""
        full = torch.arange(self.feats.shape[0], device=self.device)[None]
        out = self._outputs(full)
        self.targets = {k: (v, torch.ones(1, dtype=torch.bool, device=self.device)) for k, v in out.items()}

    @torch.inference_mode()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, K) pool positions -> (B,) scores."""
        out = self._outputs(idx.to(self.device))
        b = idx.shape[0]
        targets = {k: (t.expand(b, -1), p.expand(b)) for k, (t, p) in self.targets.items()}
        self.n_scored += b
        return self.module.teacher_cosine(out, targets).float().cpu()


def random_candidates(rng: np.random.Generator, n: int, pool: int, k: int) -> np.ndarray:
    """n random k-subsets of range(pool); the stream does not depend on how calls are batched."""
    return np.argsort(rng.random((n, pool)), axis=1, kind="stable")[:, :k]


def search(
    scorer: CandidateScorer,
    pool: int,
    k: int,
    rng: np.random.Generator,
    n_candidates: int = 1024,
    batch_size: int = 256,
    patience: int | None = 3,
    min_delta: float = 1e-4,
    refine_rounds: int = 8,
    refine_batch: int = 128,
) -> dict[str, Any]:
    """Random search in batches with early stopping, then swap-move refinement of the best subset."""
    best_idx, best, first = None, -np.inf, None
    stale, seen = 0, 0
    while seen < n_candidates:
        cand = random_candidates(rng, min(batch_size, n_candidates - seen), pool, k)
        scores = scorer(torch.from_numpy(cand)).numpy()
        if first is None:
            first = float(scores[0])
        seen += len(cand)
        j = int(np.argmax(scores))
        if scores[j] > best + min_delta:
            stale = 0
        else:
            stale += 1
        if scores[j] > best:
            best, best_idx = float(scores[j]), cand[j].copy()
        if patience is not None and stale >= patience:
            break
    random_best = best

    def score(props: np.ndarray) -> np.ndarray:
        return scorer(torch.from_numpy(props)).numpy()

    members, best = refine_by_swaps(score, best_idx, best, rng, pool, 0, refine_rounds, refine_batch, max(1, k // 8))
    return {
        "indices": np.sort(members),
        "score": best,
        "first_score": first,
        "random_best_score": random_best,
        "n_random": seen,
        "n_scored": scorer.n_scored,
    }


def check_dims(
    module: Any, features: np.ndarray, teachers: dict[str, Any], teacher_paths: dict[str, Any], ckpt_path: str
) -> None:
    """A slide from another encoder, or a teacher file of another model, cannot be scored by this
    checkpoint: say which file and which dims, instead of a shape error deep inside the model."""
    want = int(module.hparams.feature_dim)
    if features.shape[1] != want:
        raise InputError(None, f"feature dim {features.shape[1]} differs from the checkpoint's {want} ({ckpt_path})")
    for t, emb in teachers.items():
        dim = module.hparams.teacher_dims.get(t)
        if emb is not None and dim is not None and emb.shape[0] != dim:
            raise InputError(
                teacher_paths.get(t), f"teacher {t} embedding has dim {emb.shape[0]}, the checkpoint's has {dim}"
            )
