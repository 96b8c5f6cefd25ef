"""The summarize check: `WSISumSampler` (configs/sampler/wsisum.yaml defaults, budget 64) from a freshly
initialised checkpoint saved by `Trainer.save_checkpoint`, on synthetic slides, on cpu and on cuda.

The cuda row reports its speed-up over the cpu row and the overlap of their selected indices (bf16
vs fp32 scoring: printed, not required). Each row repeats its first slide on the same device; the
cpu repeat must select the same indices (the sampler is deterministic). The k-means pool inside the
sampler runs with device=auto, i.e. on CUDA faiss for both rows wherever faiss has a GPU, so cpu and
cuda differ only in the candidate scoring.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.gpu.common import BUDGET, Row, Sizes, all_finite, blobs, model_cfg, size_label, sync


def make_checkpoint(sz: Sizes, path: Path) -> Path:
    """A freshly initialised summarizer saved the way wsisum-train saves one (hparams + fusion buffers)."""
    import lightning as L
    import torch

    from wsisum.lit.pretrain import SummarizerPretraining
    from wsisum.teachers.fusion import fit_fusion

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fusion = fit_fusion({t: [rng.standard_normal(d) for _ in range(4)] for t, d in sz.teachers.items()})
    module = SummarizerPretraining(sz.dim, sz.teachers, model=model_cfg(sz.model))
    module.set_fusion(fusion)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(path.parent),
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def synthetic_slide(i: int, n: int, d: int, teachers: dict[str, int]) -> dict[str, Any]:
    rng = np.random.default_rng(100 + i)
    side = math.ceil(math.sqrt(n))
    grid = np.arange(n)
    return {
        "slide_id": f"slide{i}",
        "features": blobs(n, d, seed=100 + i, n_blobs=20).astype(np.float16),  # stored dtype of real bags
        "coords": np.stack([grid % side, grid // side], 1).astype(np.int64) * 256,
        "teachers": {t: rng.standard_normal(dd).astype(np.float32) for t, dd in teachers.items()},
    }


def summarize_slides(
    ckpt: Path, slides: list[dict], device: str, seconds: float | None = None
) -> tuple[list[Any], list[float]]:
    """Summarize `slides` in order; with `seconds`, start no new slide once that much time is spent."""
    from wsisum.summarize.search import WSISumSampler

    sampler = WSISumSampler(str(ckpt), device=device)
    sels, secs = [], []
    for s in slides:
        if seconds is not None and secs and sum(secs) > seconds:
            break
        t0 = time.perf_counter()
        sels.append(
            sampler.select(s["features"], BUDGET, slide_id=s["slide_id"], coords=s["coords"], teachers=s["teachers"])
        )
        sync(device)
        secs.append(time.perf_counter() - t0)
    return sels, secs


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b)) / max(len(a), 1)


def measure_summarize(sz: Sizes, device: str, ckpt: Path) -> tuple[Row, list[Any]]:
    """s/slide over the slides (cpu: the first `sz.cpu_slides`, none started after `sz.cpu_seconds`),
    the scores, and a repeat of the first slide; returns the row and the selections."""
    from wsisum.summarize.search import load_summarizer, resolve_device

    n_slides = sz.slides if device == "cuda" else min(sz.cpu_slides, sz.slides)
    row = Row("summarize", device, size_label("summarize", device, sz))
    slides = [synthetic_slide(i, sz.patches, sz.dim, sz.teachers) for i in range(n_slides)]
    load_summarizer(ckpt, resolve_device(device))  # model load outside the timing
    if device == "cuda":  # kernels and cuBLAS initialise outside the timing
        summarize_slides(ckpt, [synthetic_slide(99, 2 * BUDGET + 500, sz.dim, sz.teachers)], device)
    sels, secs = summarize_slides(ckpt, slides, device, sz.cpu_seconds if device == "cpu" else None)
    if len(sels) < n_slides:
        row.size = f"{len(sels)} slides x {sz.patches}x{sz.dim} model={sz.model} K={BUDGET} (time cap)"
    repeat, _ = summarize_slides(ckpt, slides[:1], device)
    scores = [float(s.score) for s in sels]
    row.figures = {
        "slides": len(sels),
        "s_per_slide": float(np.mean(secs)),
        "scores": scores,
        "n_scored": [int(s.attrs["n_scored"]) for s in sels],
        "all_unique": all(len(np.unique(s.indices)) == BUDGET for s in sels),
        "repeat_overlap": overlap(sels[0].indices, repeat[0].indices),
        "repeat_score_diff": abs(float(repeat[0].score) - scores[0]),
    }
    row.seconds = float(np.sum(secs))
    row.key = summarize_key(row.figures)
    return row, sels


def summarize_key(fig: dict[str, Any]) -> str:
    parts = [f"{fig['s_per_slide']:.2f} s/slide", f"score {np.mean(fig['scores']):.4f}"]
    if "speedup_vs_cpu" in fig:
        parts += [f"x{fig['speedup_vs_cpu']:.1f} vs cpu", f"overlap vs cpu {fig['overlap_vs_cpu']:.2f}"]
    return ", ".join([*parts, f"repeat overlap {fig['repeat_overlap']:.2f}"])


def summarize_problems(fig: dict[str, Any], device: str) -> list[str]:
    """BUDGET distinct indices per slide, finite scores, and on cpu the same summary twice."""
    bad = []
    if not fig["all_unique"]:
        bad.append("a selection has duplicate indices")
    if not all_finite(fig["scores"]):
        bad.append(f"non-finite scores {fig['scores']}")
    if device == "cpu" and fig["repeat_overlap"] != 1.0:
        bad.append(f"cpu repeat selected other indices (overlap {fig['repeat_overlap']:.2f}): not deterministic")
    return bad


def compare_summarize(row: Row, sels: list[Any], cpu: Row, cpu_sels: list[Any]) -> None:
    """Add the speed-up and the index overlap vs the cpu row (printed, not required: bf16 vs fp32)."""
    fig, common = row.figures, min(len(cpu_sels), len(sels))
    fig["speedup_vs_cpu"] = cpu.figures["s_per_slide"] / fig["s_per_slide"]
    fig["overlap_vs_cpu"] = float(np.mean([overlap(cpu_sels[i].indices, sels[i].indices) for i in range(common)]))
    diffs = np.subtract(cpu.figures["scores"][:common], fig["scores"][:common])
    fig["score_diff_vs_cpu"] = float(np.max(np.abs(diffs)))
    row.key = summarize_key(fig)
