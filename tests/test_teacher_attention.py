"""The teacher-attention tilt (wsisum/sampling/teacher_attention.py, `teacher_tilt`): on a crafted
cohort whose label is a subtle shift of a morphology every slide has, and which only the teachers see,
the learned selection puts more of the summary on that morphology than the untilted default and
than kcenter; it is deterministic for a seed and the fit is cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import write_embedding
from wsisum.sampling.coresets import KCenterSampler
from wsisum.sampling.stratified import StratifiedSummarySampler
from wsisum.sampling.teacher_attention import attention_scores


def shifted_cohort(root: Path, n_slides: int = 40, n: int = 500, d: int = 24) -> dict[str, np.ndarray]:
    """Slides of 5 tissues, one of them (`tumour`, 25 % of each slide) shifted by 0.3 of its spread
    along one direction on half the slides. Two teachers see the shift, nothing else. Returns
    slide -> tumour mask."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, d)) * 3
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    truth = {}
    for i in range(n_slides):
        sid, positive = f"s{i:02d}", i % 2 == 0
        tissue = rng.choice(5, size=n, p=[0.25, 0.3, 0.2, 0.15, 0.1])
        x = centres[tissue] + rng.normal(size=(n, d))
        tumour = tissue == 0
        x[tumour] += 0.3 * positive * direction * np.sqrt(d)
        truth[sid] = tumour
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", x.astype(np.float32), np.zeros((n, 2), np.int64))
        signal = x[tumour].mean(0) @ direction
        for t, (dim, scale) in {"A": (32, 1.0), "B": (64, 20.0)}.items():
            w = np.random.default_rng(dim).normal(size=dim)
            emb = scale * (signal * w + 0.3 * rng.normal(size=dim))
            write_embedding(root / "slide_embeddings" / "ds" / t / f"{sid}.h5", emb)
    return truth


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[Cohort, dict[str, np.ndarray], Path]:
    root = tmp_path_factory.mktemp("shifted")
    truth = shifted_cohort(root / "c")
    return Cohort(root / "c"), truth, root / "cache"


def tumour_share(sampler, cohort: Cohort, truth: dict[str, np.ndarray], budget: int) -> float:
    shares = []
    for sid, tumour in truth.items():
        x = read_bag(cohort[sid].bag_path).features
        shares.append(tumour[sampler.select(x, budget, slide_id=sid, dataset="ds").indices].mean())
    return float(np.mean(shares))


def test_the_learned_tilt_keeps_what_only_the_teachers_see(crafted):
    cohort, truth, cache = crafted
    tilted = StratifiedSummarySampler(seed=0, teacher_tilt=0.5, n_clusters=10, quota_max=0)
    tilted.prepare(cohort, cache)
    assert "ds" in tilted.attention
    plain = StratifiedSummarySampler(seed=0, n_clusters=10, quota_max=0)
    plain.prepare(cohort, cache)
    learned, default = tumour_share(tilted, cohort, truth, 16), tumour_share(plain, cohort, truth, 16)
    kcenter = tumour_share(KCenterSampler(0), cohort, truth, 16)
    assert learned > default + 0.1 and learned > kcenter + 0.1, (learned, default, kcenter)
    x = read_bag(cohort["s00"].bag_path).features
    scores = attention_scores(x, tilted.attention["ds"])
    assert scores[truth["s00"]].mean() > scores[~truth["s00"]].mean()  # it attends to the carriers


def test_the_tilt_is_deterministic_and_its_fit_cached(crafted):
    cohort, _, cache = crafted
    n_cached = len(list(cache.glob("attention-*.npz")))
    picks = []
    for _ in range(2):
        s = StratifiedSummarySampler(seed=0, teacher_tilt=0.5, n_clusters=10)
        s.prepare(cohort, cache)
        picks.append(s.select(read_bag(cohort["s01"].bag_path).features, 16, slide_id="s01", dataset="ds").indices)
    np.testing.assert_array_equal(*picks)
    assert len(list(cache.glob("attention-*.npz"))) == n_cached == 1
