"""What every GPU check shares: the problem sizes, the table row, the environment, synthetic data."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEACHERS = {"TITAN": 768, "CHIEF": 768, "PRISM": 1280}
SMALL_TEACHERS = {"TITAN": 12, "CHIEF": 12, "PRISM": 20}
K = 50
BUDGET = 64
INERTIA_TOL = 0.03  # GPU vs CPU k-means inertia, relative
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"


@dataclass
class Row:
    """One line of the table: a check on one device, its figures, and (set from the test's outcome) its status."""

    check: str
    device: str
    size: str = ""
    seconds: float | None = None
    key: str = ""
    status: str = "OK"  # OK | FAIL | SKIP
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sizes:
    kmeans_n: int
    kmeans_d: int
    model: str
    pool: int
    batch: int
    steps: int
    dim: int
    teachers: dict[str, int]
    slides: int
    patches: int
    cpu_slides: int = 2
    cpu_seconds: float = 90.0  # no further cpu summarize slide once this much time went into them


def sizes(small: bool) -> Sizes:
    """The GPU machine's sizes, or (`small`) CPU-sized ones: model=tiny, pool 32, 2 slides of 2_000 x 64."""
    if small:
        return Sizes(5_000, 64, "tiny", 32, 2, 3, 64, SMALL_TEACHERS, 2, 2_000)
    return Sizes(100_000, 768, "base", 500, 8, 5, 768, TEACHERS, 4, 20_000)


def size_label(check: str, device: str, sz: Sizes) -> str:
    if check == "kmeans":
        return f"{sz.kmeans_n}x{sz.kmeans_d} k={K}"
    if check in ("train", "train-lightning"):
        return f"model={sz.model} pool={sz.pool} batch={sz.batch} " + ("bf16" if check == "train" else "bf16-mixed")
    if check == "summarize":
        n_slides = sz.slides if device == "cuda" else min(sz.cpu_slides, sz.slides)
        return f"{n_slides} slides x {sz.patches}x{sz.dim} model={sz.model} K={BUDGET}"
    return ""


def cuda_ok() -> bool:
    import torch

    return torch.cuda.is_available()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def one_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return (lines[0] if lines else "")[:200]


def all_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def blobs(n: int, d: int, seed: int, n_blobs: int = K) -> np.ndarray:
    """A float32 mixture of `n_blobs` Gaussian blobs (k-means has a clear optimum to agree on)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, d)).astype(np.float32) * 3
    label = rng.integers(n_blobs, size=n)
    return centres[label] + rng.standard_normal((n, d), dtype=np.float32)


def model_cfg(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())


def environment() -> dict[str, Any]:
    """torch and CUDA versions, the GPU, bf16 support, faiss' version and how many GPUs faiss sees."""
    import torch

    cuda = cuda_ok()
    fig: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda}
    fig["gpu"] = torch.cuda.get_device_name(0) if cuda else None
    fig["bf16_supported"] = bool(cuda and torch.cuda.is_bf16_supported())
    fig["cpus"] = os.cpu_count()
    try:
        import faiss

        fig["faiss"] = faiss.__version__
        fig["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception as err:
        fig["faiss"], fig["faiss_gpus"] = f"not importable ({type(err).__name__}: {one_line(str(err))})", 0
    return fig


def environment_line(fig: dict[str, Any]) -> str:
    return (
        f"torch {fig['torch']}, CUDA {fig['cuda']}, GPU {fig['gpu'] or 'none'}, "
        f"faiss {fig['faiss']} ({fig['faiss_gpus']} GPUs), {fig['cpus']} CPUs"
    )
