"""The k-means check: `wsisum.sampling.kmeans.kmeans` (k=50) on a 50-blob mixture, on cpu and on CUDA faiss.

The cuda row (`gpu=True`: every GPU faiss sees) must give an inertia within INERTIA_TOL of the cpu
row's, and neither may leave a cluster empty.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from tests.gpu.common import INERTIA_TOL, K, Row, Sizes, blobs, size_label


def faiss_gpu_missing() -> str | None:
    """Why CUDA faiss cannot run here, or None when it can."""
    import faiss

    from wsisum.sampling.kmeans import gpu_available

    if gpu_available():
        return None
    if hasattr(faiss, "StandardGpuResources"):
        return "faiss sees no GPU"
    return "faiss has no GPU support (faiss-cpu; `make install-gpu`)"


def run_kmeans(x: np.ndarray, device: str) -> tuple[Any, float]:
    from wsisum.sampling.kmeans import kmeans

    t0 = time.perf_counter()
    res = kmeans(x, K, seed=0, slide_id="check_gpu", device=device)
    return res, time.perf_counter() - t0


def kmeans_figures(res: Any, n: int) -> dict[str, Any]:
    counts = np.bincount(res.assign, minlength=K)
    return {
        "inertia": float(res.sqdist.sum()),
        "inertia_per_point": float(res.sqdist.sum() / n),
        "non_empty": int((counts > 0).sum()),
        "k": int(res.k),
    }


def measure_kmeans(sz: Sizes, device: str) -> Row:
    x = blobs(sz.kmeans_n, sz.kmeans_d, seed=1)
    if device == "cuda":
        run_kmeans(x[:2_000], "cuda")  # GPU resources and cuBLAS initialise outside the timing
    res, dt = run_kmeans(x, device)
    fig = kmeans_figures(res, len(x))
    key = f"inertia/N {fig['inertia_per_point']:.2f}, {fig['non_empty']}/{K} clusters non-empty"
    return Row("kmeans", device, size_label("kmeans", device, sz), dt, key, figures=fig)


def kmeans_problems(fig: dict[str, Any]) -> list[str]:
    """k clusters, none empty, a finite inertia."""
    if math.isfinite(fig["inertia"]) and fig["k"] == K and fig["non_empty"] == K:
        return []
    return [f"k={fig['k']}, {K - fig['non_empty']} empty clusters, inertia {fig['inertia']}"]


def compare_kmeans(row: Row, cpu: Row) -> list[str]:
    """Add the inertia ratio and the speed-up vs `cpu` to the cuda `row`; a problem when the inertias
    differ by more than INERTIA_TOL."""
    fig = row.figures
    fig["inertia_ratio_vs_cpu"] = fig["inertia"] / cpu.figures["inertia"]
    fig["speedup_vs_cpu"] = cpu.seconds / row.seconds
    row.key = (
        f"inertia gpu/cpu {fig['inertia_ratio_vs_cpu']:.4f}, {fig['non_empty']}/{K} non-empty, "
        f"x{fig['speedup_vs_cpu']:.1f} vs cpu"
    )
    if abs(fig["inertia_ratio_vs_cpu"] - 1) <= INERTIA_TOL:
        return []
    return [f"inertia {fig['inertia_ratio_vs_cpu']:.4f} x the cpu one (tolerance {INERTIA_TOL:.0%})"]
