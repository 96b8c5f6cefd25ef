"""Feature geometry of a bag, to calibrate synthetic worlds against real encoders' features.

The measures of the reference table in `../shared/data/README.md`: pairwise patch cosine (mean, 5th
and 95th percentile), effective rank (participation ratio of the centred spectrum), the share of
variance in the top 10 components, and the mean cosine within the tumour, within the other tissue
and between them. `scripts/feature_geometry.py` prints them for real bags and generated worlds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_PATCHES = 2000  # pairwise cosines on at most this many patches (a seeded subsample)


@dataclass(frozen=True)
class Geometry:
    """One bag's (or an average of bags') geometry; the tumour columns are NaN without truth."""

    cos_mean: float
    cos_p5: float
    cos_p95: float
    eff_rank: float
    top10: float
    within_tumour: float = math.nan
    within_other: float = math.nan
    between: float = math.nan


def _mean_cos(a: np.ndarray, b: np.ndarray | None = None) -> float:
    """Mean cosine over pairs of distinct rows of `a`, or over all pairs of `a` x `b`."""
    if b is not None:
        return float((a @ b.T).mean()) if len(a) and len(b) else math.nan
    n = len(a)
    if n < 2:
        return math.nan
    s = a.sum(axis=0)
    return float((s @ s - np.sum(a * a)) / (n * (n - 1)))


def feature_geometry(
    features: np.ndarray,
    tumour: np.ndarray | None = None,
    other: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> Geometry:
    """The geometry of one bag; `tumour`/`other` are boolean patch masks (other defaults to ~tumour)."""
    x = np.asarray(features, dtype=np.float64)
    keep = np.arange(len(x))
    if len(x) > MAX_PATCHES:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_PATCHES, replace=False))
    u = x[keep] / np.maximum(np.linalg.norm(x[keep], axis=1, keepdims=True), 1e-12)
    cos = (u @ u.T)[np.triu_indices(len(u), k=1)]
    lam = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    g = dict(
        cos_mean=float(cos.mean()),
        cos_p5=float(np.percentile(cos, 5)),
        cos_p95=float(np.percentile(cos, 95)),
        eff_rank=float(lam.sum() ** 2 / max(np.sum(lam**2), 1e-300)),
        top10=float(lam[:10].sum() / max(lam.sum(), 1e-300)),
    )
    if tumour is not None:
        t = np.asarray(tumour, dtype=bool)[keep]
        o = ~t if other is None else np.asarray(other, dtype=bool)[keep]
        g.update(within_tumour=_mean_cos(u[t]), within_other=_mean_cos(u[o]), between=_mean_cos(u[t], u[o]))
    return Geometry(**g)


def average(rows: list[Geometry]) -> Geometry:
    """Column means over bags (NaN-aware: slides without tumour leave the tumour columns out)."""
    cols = Geometry.__dataclass_fields__
    out = {}
    for c in cols:
        vals = np.array([getattr(r, c) for r in rows], dtype=float)
        out[c] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return Geometry(**out)


def _f(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.2f}"


HEADER = "| bag | cosine mean [p5, p95] | eff. rank | top-10 var | within tumour / other / between |\n|---|---|---:|---:|---|"


def table_row(name: str, g: Geometry) -> str:
    """One markdown row, as the reference table in `../shared/data/README.md` writes it."""
    tumour = (
        "—" if not math.isfinite(g.within_tumour) else f"{_f(g.within_tumour)} / {_f(g.within_other)} / {_f(g.between)}"
    )
    return (
        f"| {name} | {g.cos_mean:.2f} [{g.cos_p5:.2f}, {g.cos_p95:.2f}] | {g.eff_rank:.1f} | {g.top10:.2f} | {tumour} |"
    )
