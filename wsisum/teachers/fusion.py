"""Teacher statistics and fusion, fitted on the training split only and saved as plain `.npz`.

The original concatenates TITAN, CHIEF and PRISM and reduces with PCA, unnormalised: PRISM (1280-d,
norm ~34) then carries ~81 % of the energy and the "multi-teacher" target is mostly one teacher.
Here each teacher is standardised first (per-dimension z-score, then scaled so every teacher has
the same total variance), so PCA sees them equally. No pickles: arrays in an npz, names in a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError

FUSION_FILE = "teacher_fusion.npz"  # the fitted fusion, in a pretraining run's directory


@dataclass
class TeacherFusion:
    """Per-teacher mean/scale; with `mode="pca"` also the PCA of the standardised concatenation."""

    teachers: list[str]
    mode: str = "heads"  # "pca" | "heads"
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, np.ndarray] = field(default_factory=dict)
    pca_mean: np.ndarray | None = None
    pca_components: np.ndarray | None = None  # (out_dim, sum D_t)
    explained_variance_ratio: np.ndarray | None = None

    @property
    def dims(self) -> dict[str, int]:
        return {t: int(self.mean[t].shape[0]) for t in self.teachers}

    @property
    def out_dims(self) -> dict[str, int]:
        """The distillation targets the student regresses: one fused vector, or one per teacher."""
        if self.mode == "pca":
            assert self.pca_components is not None
            return {"fused": int(self.pca_components.shape[0])}
        return self.dims

    def standardize(self, t: str, x: np.ndarray) -> np.ndarray:
        return (x - self.mean[t]) / self.scale[t]

    def fuse(self, standardized: Mapping[str, np.ndarray]) -> np.ndarray:
        """PCA-project standardised embeddings (B, D_t) per teacher; missing ones enter as the mean (0)."""
        cat = np.concatenate([standardized[t] for t in self.teachers], axis=-1)
        return (cat - self.pca_mean) @ self.pca_components.T

    def energy_share(self, raw: Mapping[str, np.ndarray], standardized: bool) -> dict[str, float]:
        """Share of the concatenation's total variance per teacher (the 81 % PRISM figure)."""
        var = {}
        for t in self.teachers:
            x = self.standardize(t, raw[t]) if standardized else raw[t]
            var[t] = float(((x - x.mean(0)) ** 2).sum(1).mean())
        total = sum(var.values()) or 1.0
        return {t: v / total for t, v in var.items()}

    def save(self, path: str | Path) -> Path:
        arrays: dict[str, np.ndarray] = {"teachers": np.array(self.teachers), "mode": np.array(self.mode)}
        for t in self.teachers:
            arrays[f"mean/{t}"], arrays[f"scale/{t}"] = self.mean[t], self.scale[t]
        if self.mode == "pca":
            arrays |= {
                "pca_mean": self.pca_mean,
                "pca_components": self.pca_components,
                "explained_variance_ratio": self.explained_variance_ratio,
            }
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherFusion:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "teacher fusion file not found")
        with np.load(path, allow_pickle=False) as z:
            teachers = [str(t) for t in z["teachers"]]
            fusion = cls(teachers, str(z["mode"]))
            for t in teachers:
                fusion.mean[t], fusion.scale[t] = z[f"mean/{t}"], z[f"scale/{t}"]
            if fusion.mode == "pca":
                fusion.pca_mean, fusion.pca_components = z["pca_mean"], z["pca_components"]
                fusion.explained_variance_ratio = z["explained_variance_ratio"]
        return fusion


def fit_fusion(
    embeddings: Mapping[str, Sequence[np.ndarray | None]], mode: str = "heads", out_dim: int = 768
) -> TeacherFusion:
    """Fit on the TRAINING slides: embeddings[t][i] is slide i's teacher-t vector or None if missing."""
    if mode not in ("pca", "heads"):
        raise InputError(None, f"fusion mode must be 'pca' or 'heads', got {mode!r}")
    teachers = list(embeddings)
    fusion = TeacherFusion(teachers, mode)
    for t in teachers:
        rows = [e for e in embeddings[t] if e is not None]
        if len(rows) < 2:
            raise InputError(
                None, f"teacher {t}: need embeddings of at least 2 training slides to standardise, got {len(rows)}"
            )
        x = np.stack(rows).astype(np.float64)
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-8 * max(float(std.max()), 1e-12), std, 1.0)
        # z-score, then divide by sqrt(D_t): every teacher gets total variance 1 whatever its width
        fusion.mean[t] = mean.astype(np.float32)
        fusion.scale[t] = (std * np.sqrt(x.shape[1])).astype(np.float32)
    if mode == "pca":
        n = len(next(iter(embeddings.values())))
        cat = np.stack(
            [
                np.concatenate(
                    [
                        fusion.standardize(t, embeddings[t][i])
                        if embeddings[t][i] is not None
                        else np.zeros(fusion.dims[t])
                        for t in teachers
                    ]
                )
                for i in range(n)
            ]
        ).astype(np.float64)
        mu = cat.mean(0)
        _, s, vt = np.linalg.svd(cat - mu, full_matrices=False)
        k = min(out_dim, vt.shape[0])
        fusion.pca_mean = mu.astype(np.float32)
        fusion.pca_components = vt[:k].astype(np.float32)
        var = s**2
        fusion.explained_variance_ratio = (var[:k] / max(var.sum(), 1e-12)).astype(np.float32)
    return fusion


def fit_training_fusion(
    teacher_paths: Mapping[str, Sequence[Path | None]],
    embeddings: Mapping[Path, np.ndarray],
    mode: str = "heads",
    out_dim: int | None = None,
) -> TeacherFusion:
    """The fusion of a pretraining run, fitted on its training slides only: `teacher_paths[t][i]` is
    training slide i's teacher-t file (None when missing), `embeddings` every usable file's vector as
    read once at setup (`PretrainDataModule.embeddings`); `out_dim` None = 768."""
    vectors = {t: [embeddings[p] if p else None for p in ps] for t, ps in teacher_paths.items()}
    return fit_fusion(vectors, mode=mode, out_dim=out_dim or 768)
