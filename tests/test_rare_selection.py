"""Rare morphologies reach the pool and the summary; the guided selection is deterministic and never
below the best random candidate it starts from; budget-aware pretraining draws every size asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_cohort
from tests.test_search import TEACHERS, _train
from wsisum.data.bags import read_bag
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.models.summarizer import random_visible
from wsisum.sampling.allocation import allocate, pool_weights
from wsisum.sampling.facility import cosine_matrix, facility_location_greedy
from wsisum.sampling.pool import PoolTransform
from wsisum.sampling.rare import outlier_scores, weighted_farthest_points
from wsisum.sampling.samplers import KMeansSampler
from wsisum.sampling.stratified import quota_size
from wsisum.summarize.search import WSISumSampler
from wsisum.summarize.selection import SummaryObjective, guided_search


def lesion_slide(n: int = 3000, n_lesion: int = 3, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A slide of 4 big tissue morphologies and one 3-patch lesion (like an ITC) placed at random rows."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (5, dim))
    big = [round(n * f) for f in (0.47, 0.3, 0.15)]
    sizes = [*big, n - sum(big) - n_lesion, n_lesion]
    labels = np.repeat(np.arange(5), sizes)
    x = means[labels] + rng.normal(0, 0.35, (n, dim))
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), np.flatnonzero(labels[perm] == 4)


def test_sqrt_allocation_keeps_a_3_patch_cluster() -> None:
    sizes = np.array([2000, 600, 397, 3])
    assert allocate(sizes, 64)[3] == 0  # proportional rounding loses it
    sqrt = allocate(sizes, 64, power=0.5)
    assert sqrt[3] >= 1 and sqrt.sum() == 64 and (sqrt <= sizes).all()
    assert sqrt[0] > sqrt[1] > sqrt[2] > sqrt[3]  # still ordered by size, only flatter
    assert allocate(sizes, 64, min_per_stratum=1)[3] == 1
    with pytest.raises(ValueError):
        allocate(sizes, 10, power=0.0)


def test_outliers_rank_the_lesion_first() -> None:
    x, lesion = lesion_slide()
    score = outlier_scores(x)
    assert set(np.argsort(-score)[:3]) == set(lesion)
    sub = outlier_scores(x, reference=1000, slide_id="s")  # the subsampled density estimate agrees
    assert set(np.argsort(-sub)[:10]) >= set(lesion)
    first = weighted_farthest_points(x, 4, score)
    assert first[0] in lesion and len(set(first)) == 4
    exclude = np.zeros(len(x), dtype=bool)
    exclude[first[0]] = True
    assert first[0] not in weighted_farthest_points(x, 4, score, exclude)


def test_3_patch_lesion_reaches_pool_and_summary(tmp_path: Path) -> None:
    x, lesion = lesion_slide()
    baseline = PoolTransform(500, n_clusters=50, seed=0).pool_indices("s", x, "")
    rare_pool = PoolTransform(500, 50, 0, allocation_power=0.5, min_per_cluster=1, rare_quota=0.2)
    pool = rare_pool.pool_indices("s", x, "")
    assert len(pool) == 500 and len(np.unique(pool)) == 500
    assert set(lesion) <= set(pool), "every lesion patch reaches the pool"
    assert len(set(lesion) & set(baseline)) < 3  # the proportional pool loses some (1 expected at random)
    km = KMeansSampler(seed=0).select(x, 16, slide_id="s").indices
    assert not set(lesion) & set(km)  # and cluster-proportional sampling at 16 drops it

    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [300, 200, 150, 120, 100, 90]}, dim=x.shape[1], teachers=TEACHERS)
    ckpt = _train(root, tmp_path / "run")
    teachers = {t: np.ones(d, np.float32) for t, d in TEACHERS.items()}
    sampler = WSISumSampler(str(ckpt), composition_patches=16)
    sel = sampler.select(x, 32, slide_id="s", teachers=teachers)
    assert sel.attrs["n_quota"] == quota_size(32, sampler.summary_quota, sampler.composition_patches) == 4
    assert set(lesion) & set(sel.indices)  # the rare morphology is represented
    small = sampler.select(x, 16, slide_id="s", teachers=teachers)
    assert small.attrs["n_quota"] == 0  # the first 16 patches describe the composition
    everywhere = WSISumSampler(str(ckpt)).select(x, 16, slide_id="s", teachers=teachers)  # the default: 4 first
    assert everywhere.attrs["n_quota"] == 3 and set(lesion) & set(everywhere.indices)  # then 1/4 of 12 quota


def _objective(seed: int = 0) -> tuple[SummaryObjective, np.ndarray]:
    x, _ = lesion_slide(n=300, n_lesion=3, seed=seed)
    sim = cosine_matrix(x)
    w = torch.from_numpy(np.random.default_rng(1).normal(size=x.shape[0]).astype(np.float32))

    def teacher(idx: torch.Tensor) -> torch.Tensor:  # a stand-in slide-level term: mean of a patch score
        return torch.tanh(w[idx].mean(-1))

    return SummaryObjective(sim, teacher), sim


def test_guided_search_deterministic_and_not_below_random() -> None:
    objective, sim = _objective()
    quota = np.array([5, 17])
    runs = [guided_search(objective, sim, 24, quota, np.random.default_rng(3)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0]["indices"], runs[1]["indices"])
    assert runs[0]["score"] == runs[1]["score"]
    other = guided_search(objective, sim, 24, quota, np.random.default_rng(4))
    assert not np.array_equal(other["indices"], runs[0]["indices"]) or other["score"] == runs[0]["score"]
    for seed in range(5):
        res = guided_search(objective, sim, 24, quota, np.random.default_rng(seed), n_random=31)
        assert res["score"] >= res["random_best_score"] and res["score"] >= res["first_score"]
        assert {5, 17} <= set(res["indices"]) and len(set(res["indices"])) == 24
        assert objective(res["indices"][None])[0] == pytest.approx(res["score"], abs=1e-5)
    # facility location: each greedy step is the best single addition
    fl = facility_location_greedy(sim, 3, np.array([0]))
    cur = sim[:, [0]].max(1)
    gains = np.maximum(sim - cur[:, None], 0).sum(0)
    gains[0] = -np.inf
    assert fl[1] == int(np.argmax(gains))


def test_quota_size_leaves_the_composition_first() -> None:
    assert [quota_size(k, 0.25, 16) for k in (8, 16, 17, 64, 256)] == [0, 0, 0, 12, 60]
    assert quota_size(64, 0.5, 0) == 32 and quota_size(64, 0.0, 16) == 0
    assert [quota_size(k, 0.25, 4, 8) for k in (16, 36, 64, 256)] == [3, 8, 8, 8]  # capped, not scaled
    assert quota_size(256, 0.25, 4, None) == 63 and quota_size(64, 0.25, 4, 0) == 0


def test_slide_weighted_coverage_matches_a_hand_computation() -> None:
    # a slide of 10 patches: cluster 0 has 8, cluster 1 has 2; the pool over-draws cluster 1 (2 of 2)
    slide = np.array([0] * 8 + [1] * 2)
    pool = np.array([0, 1, 8, 9])  # two of cluster 0 (weight 8/2 = 4 each), both of cluster 1 (1 each)
    w = pool_weights(slide[pool], slide)
    np.testing.assert_allclose(w, [4.0, 4.0, 1.0, 1.0])
    sim = np.array(
        [[1.0, 0.5, 0.1, 0.2], [0.5, 1.0, 0.0, 0.1], [0.1, 0.0, 1.0, 0.8], [0.2, 0.1, 0.8, 1.0]], dtype=np.float32
    )
    obj = SummaryObjective(sim, None, teacher_weight=0.0, weights=w)
    # subset {0}: best cosines 1, 0.5, 0.1, 0.2 -> (4*1 + 4*0.5 + 0.1 + 0.2) / 10
    assert obj(np.array([[0]]))[0] == pytest.approx(0.63)
    unweighted = SummaryObjective(sim, None, teacher_weight=0.0)
    assert unweighted(np.array([[0]]))[0] == pytest.approx((1 + 0.5 + 0.1 + 0.2) / 4)
    # the next facility-location pick after {0}: weighted, patch 1 gains 4*(1-0.5) = 2 > patch 2's
    # 1*(1-0.1) + 1*(0.8-0.2) = 1.5; unweighted, 0.5 < 1.5 and the small cluster comes first
    assert facility_location_greedy(sim, 1, np.array([0]), w)[1] == 1
    assert facility_location_greedy(sim, 1, np.array([0]))[1] == 2


def test_budget_aware_pretraining_draws_every_size() -> None:
    module = SummarizerPretraining(
        8,
        {"T": 4},
        model={"embed_dim": 16, "depth": 1, "heads": 2, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2},
        visible_sizes=[16, 64, 256],
    )
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 500, dtype=torch.bool)
    mask[2, 40:] = False  # a 40-patch bag keeps all its patches visible at any larger size
    seen = set()
    for _ in range(60):
        size = module.draw_visible_size(gen)
        vis = random_visible(mask, 0.875, gen, size)
        assert vis[0].sum() == size and vis[1].sum() == size and vis[2].sum() == min(size, 40)
        assert not (vis & ~mask).any()
        seen.add(size)
    assert seen == {16, 64, 256}
    assert (
        SummarizerPretraining(
            8,
            {"T": 4},
            model={"embed_dim": 16, "depth": 1, "heads": 2, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2},
        ).draw_visible_size()
        is None
    )
    with pytest.raises(ValueError):
        SummarizerPretraining(8, {"T": 4}, visible_sizes=[0, 16])


def test_summary_bag_records_the_quota(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [400, 200, 150, 120, 100, 90]}, dim=16, teachers=TEACHERS)
    ckpt = _train(
        root, tmp_path / "run", "lit.visible_sizes=[8,16]", "pool.rare_quota=0.2", "pool.allocation_power=0.5"
    )
    bag = read_bag(root / "h5_files" / "dsA" / "dsA-000.h5")
    teachers = {t: np.ones(d, np.float32) for t, d in TEACHERS.items()}
    a = WSISumSampler(str(ckpt), seed=0).select(
        bag.features, 16, slide_id="dsA-000", coords=bag.coords, teachers=teachers
    )
    b = WSISumSampler(str(ckpt), seed=0).select(
        bag.features, 16, slide_id="dsA-000", coords=bag.coords, teachers=teachers
    )
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.score >= a.attrs["random_best_score"]
    noteacher = WSISumSampler(str(ckpt), teacher_weight=0.0).named("wsisum-noteacher")
    assert noteacher.name == "wsisum-noteacher" and not noteacher.needs_teachers
    # every variant draws the default's stream, so an ablation differs only by its switch
    np.testing.assert_array_equal(noteacher.rng("s").random(4), WSISumSampler(str(ckpt)).rng("s").random(4))
    c = noteacher.select(bag.features, 16, slide_id="dsA-000", coords=bag.coords)
    assert len(c.indices) == 16
