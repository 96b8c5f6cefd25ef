"""Samplers: exactly min(K, N) distinct valid indices, exact allocation, determinism, real slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsisum.data.bags import read_bag
from wsisum.errors import InputError
from wsisum.sampling.allocation import allocate
from wsisum.sampling.kmeans import kmeans
from wsisum.sampling.samplers import (
    AttentionSampler,
    EntropySampler,
    KMeansSampler,
    LocationSampler,
    RandomSampler,
    grid_cells,
    patch_entropy,
)

K = 16


def _samplers(seed: int = 0) -> dict:
    return {
        "random": RandomSampler(seed),
        "kmeans": KMeansSampler(seed, n_clusters=8),
        "kmeans_min": KMeansSampler(seed, n_clusters=8, min_per_cluster=2, within="nearest", normalize=True),
        "entropy": EntropySampler(seed),
        "location": LocationSampler(seed),
        "attention": AttentionSampler(seed, scorer=lambda f: f[:, 0]),
    }


def _bag(n: int, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1) * 512
    return feats, coords


@pytest.mark.parametrize("name", sorted(_samplers()))
@pytest.mark.parametrize("n", [1, 7, K - 1, K, 10 * K])
def test_exactly_min_k_n_distinct_valid(name: str, n: int) -> None:
    feats, coords = _bag(n)
    sel = _samplers()[name].select(feats, K, slide_id="s", coords=coords)
    idx = sel.indices
    assert len(idx) == min(K, n) == len(np.unique(idx))
    assert idx.min() >= 0 and idx.max() < n and (np.diff(idx) > 0).all()
    assert sel.attrs["all_patches"] == (n <= K)


@pytest.mark.parametrize("name", sorted(_samplers()))
def test_deterministic_per_seed_and_slide(name: str) -> None:
    feats, coords = _bag(500, seed=3)
    a = _samplers(0)[name].select(feats, K, slide_id="s1", coords=coords).indices
    b = _samplers(0)[name].select(feats, K, slide_id="s1", coords=coords).indices
    np.testing.assert_array_equal(a, b)
    if name in ("random", "kmeans", "location"):  # the stochastic ones
        c = _samplers(1)[name].select(feats, K, slide_id="s1", coords=coords).indices
        d = _samplers(0)[name].select(feats, K, slide_id="s2", coords=coords).indices
        assert not np.array_equal(a, c) and not np.array_equal(a, d)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=60),
    budget=st.integers(1, 400),
    floor=st.integers(0, 4),
)
def test_allocation_exact_and_capped(sizes: list[int], budget: int, floor: int) -> None:
    sizes_a = np.array(sizes)
    alloc = allocate(sizes_a, budget, floor)
    assert alloc.sum() == min(budget, sizes_a.sum())
    assert (alloc >= 0).all() and (alloc <= sizes_a).all()
    if floor and np.minimum(sizes_a, floor).sum() <= budget:
        assert (alloc >= np.minimum(sizes_a, floor)).all()
    if not floor and budget < sizes_a.sum():
        quota = budget * sizes_a / sizes_a.sum()  # Hamilton: within one of the exact quota (no caps bind)
        assert (np.abs(alloc - quota) < 1 + 1e-9).all()


def test_allocation_original_overfill_case() -> None:
    # rounding up three tiny clusters would overfill them; the total must still be exact
    alloc = allocate(np.array([1, 1, 1, 497]), 500)
    assert alloc.tolist() == [1, 1, 1, 497]
    assert allocate(np.array([3, 3, 94]), 10, 2).tolist() == [2, 2, 6]


def test_kmeans_sampler_keeps_rare_cluster_with_floor() -> None:
    rng = np.random.default_rng(0)
    common = rng.normal(0, 1, size=(990, 8))
    rare = rng.normal(12, 0.1, size=(10, 8))  # 1 % of the slide, far away
    feats = np.vstack([common, rare]).astype(np.float32)
    plain = KMeansSampler(0, n_clusters=10).select(feats, 20, slide_id="s").indices
    floored = KMeansSampler(0, n_clusters=10, min_per_cluster=2).select(feats, 20, slide_id="s").indices
    assert (floored >= 990).sum() >= 2
    assert (plain >= 990).sum() <= (floored >= 990).sum()


def test_kmeans_is_seeded_and_recovers_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 10, size=(5, 16))
    truth = rng.integers(0, 5, 2000)
    x = (centres[truth] + rng.normal(0, 0.5, size=(2000, 16))).astype(np.float32)
    a = kmeans(x, 5, seed=0, slide_id="s")
    b = kmeans(x, 5, seed=0, slide_id="s")
    np.testing.assert_array_equal(a.assign, b.assign)
    # every found cluster is pure: k-means++ init does not merge separated groups
    for j in range(5):
        assert len(np.unique(truth[a.assign == j])) == 1


def test_entropy_matches_definition() -> None:
    x = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-2.0, 2.0, 0.0, 0.0]])
    h = patch_entropy(x)
    np.testing.assert_allclose(h, [np.log(4), 0.0, np.log(4), np.log(2)], atol=1e-6)
    sel = EntropySampler().select(np.vstack([x, x[:1] * 3]), 2, slide_id="s")
    assert sel.indices.tolist() == [0, 2]  # highest entropy, ties by index


def test_location_spreads_over_space_and_handles_degenerate_coords() -> None:
    n = 40 * 40
    feats, coords = _bag(n)
    idx = LocationSampler(0).select(feats, 16, slide_id="s", coords=coords).indices
    quadrant = (coords[idx, 0] >= 20 * 512).astype(int) * 2 + (coords[idx, 1] >= 20 * 512)
    assert np.bincount(quadrant, minlength=4).tolist() == [4, 4, 4, 4]
    same = np.zeros((50, 2), dtype=np.int64)
    assert len(LocationSampler(0).select(feats[:50], 8, slide_id="s", coords=same).indices) == 8
    line = np.stack([np.arange(50) * 512, np.zeros(50)], 1)
    assert len(np.unique(grid_cells(line, 10))) == 10
    with pytest.raises(InputError, match="needs coords"):
        LocationSampler(0).select(feats, 8, slide_id="s", coords=None)


def test_attention_without_model_errors_clearly() -> None:
    with pytest.raises(InputError, match=r"sampler=attention needs a trained attention-MIL model"):
        AttentionSampler(0)


def test_bad_budget() -> None:
    with pytest.raises(InputError, match="budget must be a positive integer"):
        RandomSampler().select(np.ones((5, 2)), 0, slide_id="s")


def test_real_slide_every_sampler(real_data: Path) -> None:
    bag = read_bag(real_data / "wsisum_demo" / "h5_files" / "tcga_brca" / "TCGA-3C-AALI-01.h5")
    samplers = _samplers() | {"kmeans50": KMeansSampler(0, n_clusters=50)}
    for name, sampler in samplers.items():
        sel = sampler.select(bag.features, 63, slide_id="TCGA-3C-AALI-01", coords=bag.coords)
        assert len(np.unique(sel.indices)) == 63, name
    km = samplers["kmeans50"].select(bag.features, 63, slide_id="TCGA-3C-AALI-01")
    assert km.attrs["n_clusters"] == 50 and 25 <= km.attrs["clusters_kept"] < 50  # small clusters round to 0
    floored = KMeansSampler(0, n_clusters=50, min_per_cluster=1).select(bag.features, 63, slide_id="TCGA-3C-AALI-01")
    assert floored.attrs["clusters_kept"] == 50  # ... unless every morphology is given a floor
