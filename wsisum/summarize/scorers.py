"""Per-patch scorers that samplers rank by, built from trained models (a higher stage than sampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsisum.errors import InputError
from wsisum.sampling.samplers import AttentionSampler


class MILAttentionScorer:
    """Pre-softmax attention of a trained ABMIL / CLAM-SB on every patch of a bag (picklable:
    the model is loaded lazily in whichever process scores)."""

    def __init__(self, ckpt_path: str | Path):
        self.ckpt_path = str(ckpt_path)
        self._model = None

    def _load(self):
        if self._model is None:
            from wsisum.lit.classifier import load_mil_checkpoint

            mil = load_mil_checkpoint(self.ckpt_path)
            if not getattr(mil.model, "has_attention", False):
                raise InputError(
                    self.ckpt_path, f"{type(mil.model).__name__} has no attention scores (use abmil or clam_sb)"
                )
            self._model = mil.model
        return self._model

    def __getstate__(self) -> dict:
        return {"ckpt_path": self.ckpt_path, "_model": None}

    @torch.inference_mode()
    def __call__(self, features: np.ndarray) -> np.ndarray:
        model = self._load()
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))[None]
        if x.shape[-1] != model.in_dim:
            raise InputError(self.ckpt_path, f"model expects {model.in_dim}-d features, the bag has {x.shape[-1]}")
        out = model(x, torch.ones(x.shape[:2], dtype=torch.bool))
        return out.attention[0].float().numpy()


def attention_sampler(seed: int = 0, ckpt_path: str | None = None) -> AttentionSampler:
    """The `attention` sampler: top-K patches by the attention of an ABMIL checkpoint."""
    if ckpt_path is None:
        return AttentionSampler(seed, scorer=None)  # raises the one-line explanation
    path = Path(ckpt_path)
    if not path.is_file():
        raise InputError(path, "attention checkpoint not found")
    scorer = MILAttentionScorer(path)
    scorer._load()  # fail now, with one line, if it is not a usable attention-MIL checkpoint
    return AttentionSampler(seed, scorer=scorer)
