"""The summarizers users compare against (mosaic, sdm, splice, kcenter, facility) and budget=auto."""

from __future__ import annotations

import numpy as np
import pytest

from wsisum.errors import InputError
from wsisum.sampling.base import AUTO
from wsisum.sampling.collage import SDMSampler, SpliceSampler, collage, scan_order
from wsisum.sampling.coresets import FacilitySampler, KCenterSampler
from wsisum.sampling.facility import cosine_matrix, coverage, facility_location_greedy, slide_facility_location
from wsisum.sampling.kmeans import kmeans
from wsisum.sampling.samplers import RandomSampler
from wsisum.sampling.yottixel import MosaicSampler

K = 16
NEW = {"mosaic": MosaicSampler, "sdm": SDMSampler, "splice": SpliceSampler, "kcenter": KCenterSampler}
NEW["facility"] = FacilitySampler


def _slide(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered features (a few morphologies) on a jittered grid of coords."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 4
    feats = (centres[rng.integers(6, size=n)] + rng.normal(size=(n, d))).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    coords = np.stack([np.arange(n) % side, np.arange(n) // side], 1) * 256
    return feats, coords[rng.permutation(n)]


@pytest.mark.parametrize("name", sorted(NEW))
@pytest.mark.parametrize("n", [1, 5, K, 3000])
@pytest.mark.parametrize("d", [3, 64])
def test_exactly_min_k_n_distinct(name: str, n: int, d: int) -> None:
    feats, coords = _slide(n, d)
    sel = NEW[name](0).select(feats, K, slide_id="s", coords=coords)
    assert len(sel.indices) == min(K, n) == len(np.unique(sel.indices))
    assert sel.indices.min() >= 0 and sel.indices.max() < n


@pytest.mark.parametrize("name", sorted(NEW))
def test_deterministic_for_seed_and_slide(name: str) -> None:
    feats, coords = _slide(2000, 16, seed=4)
    runs = [NEW[name](s).select(feats, K, slide_id=sid, coords=coords).indices for s, sid in [(0, "a"), (0, "a")]]
    np.testing.assert_array_equal(*runs)
    if NEW[name].auto_size:
        a = NEW[name](0).select(feats, AUTO, slide_id="a", coords=coords).indices
        np.testing.assert_array_equal(a, NEW[name](0).select(feats, AUTO, slide_id="a", coords=coords).indices)


def test_kcenter_keeps_a_planted_outlier() -> None:
    for seed in range(4):
        feats, coords = _slide(3000, 32, seed)
        odd = 1234 + seed
        feats[odd] += 60.0  # one patch far from every morphology
        assert odd in KCenterSampler(seed).select(feats, 8, slide_id=f"s{seed}", coords=coords).indices


def test_facility_beats_random_on_its_objective() -> None:
    for seed in range(3):
        for n, d in [(500, 8), (3000, 64)]:
            feats, coords = _slide(n, d, seed)
            fl = FacilitySampler(seed).select(feats, K, slide_id=f"s{seed}", coords=coords).indices
            rnd = RandomSampler(seed).select(feats, K, slide_id=f"s{seed}", coords=coords).indices
            assert coverage(feats, fl) > coverage(feats, rnd)


def test_facility_stochastic_close_to_plain_greedy() -> None:
    feats, _ = _slide(1500, 16, 2)
    rng = np.random.default_rng(0)
    stochastic, _ = slide_facility_location(feats, 20, rng)
    plain, _ = slide_facility_location(feats, 20, rng, epsilon=0)
    np.testing.assert_array_equal(plain, facility_location_greedy(cosine_matrix(feats), 20, np.zeros(0, int)))
    assert coverage(feats, stochastic) >= 0.97 * coverage(feats, plain)


@pytest.mark.parametrize("percent", [0.05, 0.2])
def test_mosaic_auto_size_within_one_per_group(percent: float) -> None:
    for seed in range(3):
        feats, coords = _slide(3000, 32, seed)
        sampler = MosaicSampler(seed, percent=percent)
        sel = sampler.select(feats, AUTO, slide_id=f"s{seed}", coords=coords)
        groups = np.bincount(kmeans(feats, 9, seed=seed, slide_id=f"s{seed}").assign)
        groups = groups[groups > 0]
        assert abs(len(sel.indices) - percent * len(feats)) <= len(groups)
        assert len(sel.indices) == sum(max(1, int(np.floor(percent * g + 0.5))) for g in groups)


def test_mosaic_fixed_budget_shares_groups_and_needs_coords() -> None:
    feats, coords = _slide(3000, 32, 1)
    idx = MosaicSampler(0).select(feats, 9, slide_id="s", coords=coords).indices
    assign = kmeans(feats, 9, seed=0, slide_id="s").assign
    assert len(np.unique(assign[idx])) == len(np.unique(assign))  # one per group when K = groups
    with pytest.raises(InputError, match="mosaic sampler needs coords"):
        MosaicSampler(0).select(feats, 9, slide_id="s")


def test_sdm_auto_one_per_integer_distance_and_scale_dependence() -> None:
    feats, coords = _slide(3000, 32, 0)
    dist = np.linalg.norm(feats.astype(np.float64) - feats.mean(0), axis=1)
    sel = SDMSampler(0).select(feats, AUTO, slide_id="s", coords=coords)
    bands = np.floor(dist + 0.5)
    assert len(sel.indices) == len(np.unique(bands))
    assert len(np.unique(bands[sel.indices])) == len(sel.indices)  # one per band
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert len(SDMSampler(0).select(unit, AUTO, slide_id="s").indices) <= 2  # documented: scale-dependent


def test_sdm_fixed_k_spans_the_distance_quantiles() -> None:
    feats, _ = _slide(3000, 32, 0)
    dist = np.linalg.norm(feats.astype(np.float64) - feats.mean(0), axis=1)
    idx = SDMSampler(0).select(feats, 10, slide_id="s").indices
    ranks = np.argsort(np.argsort(dist, kind="stable"), kind="stable")[idx]
    assert sorted(ranks // 300) == list(range(10))  # one patch in every tenth of the ranks
    ties = np.zeros((50, 4), dtype=np.float32)  # all distances equal: still K distinct patches
    assert len(SDMSampler(0).select(ties, 7, slide_id="t").indices) == 7


def test_splice_auto_follows_the_collage_rule() -> None:
    feats, coords = _slide(800, 8, 0)
    order = scan_order(coords, len(feats))
    assert (np.diff(coords[order][:, 1]) >= 0).all()
    sel = SpliceSampler(0).select(feats, AUTO, slide_id="s", coords=coords).indices
    # brute force: the same rule with plain numpy on distances (not squared distances)
    x = feats[order].astype(np.float64)
    remaining, kept = list(range(len(x))), []
    while remaining:
        p, rest = remaining[0], np.array(remaining[1:], dtype=int)
        kept.append(p)
        if not len(rest):
            break
        d = np.linalg.norm(x[rest] - x[p], axis=1)
        remaining = list(rest[d >= np.percentile(d, 30, method="lower")])
    np.testing.assert_array_equal(np.sort(sel), np.sort(order[kept]))
    assert 10 < len(sel) < 40  # about log(N) / -log(0.7) patches
    assert len(collage(x.astype(np.float32), (x**2).sum(1), 0.0)) == len(x)  # q = 0 drops nothing


def test_splice_fixed_k_without_coords_uses_file_order() -> None:
    feats, _ = _slide(3000, 32, 3)
    for k in (4, 16, 100):
        sel = SpliceSampler(0).select(feats, k, slide_id="s")
        assert len(np.unique(sel.indices)) == k and 0 in sel.indices  # file order: patch 0 starts the collage


def test_budget_auto_only_for_samplers_with_their_own_size() -> None:
    feats, coords = _slide(100, 4)
    for sampler in (KCenterSampler(0), FacilitySampler(0), RandomSampler(0)):
        with pytest.raises(InputError, match=rf"budget=auto needs a sampler .*sampler={sampler.name} needs budget=K"):
            sampler.select(feats, AUTO, slide_id="s", coords=coords)
    assert MosaicSampler(0).recipe(AUTO)["budget"] == "auto" and KCenterSampler(0).recipe(8)["budget"] == 8


def test_budget_auto_end_to_end_on_the_tiny_cohort(tiny_cohort, tmp_path, capsys) -> None:
    """summarize budget=auto records each slide's size; evaluate reads the per-slide sizes."""
    import h5py

    from tests.conftest import compose_config
    from wsisum.apps.summarize import summarize
    from wsisum.evaluate.runner import run_evaluation

    out = tmp_path / "mosaic"
    over = [f"data.root={tiny_cohort}", "sampler=mosaic", "budget=auto", f"out_dir={out}", "workers=0"]
    report = summarize(compose_config("summarize", [*over, "progress=false"], tmp_path / "s"))
    assert report.ok and report.done
    sizes = {}
    for path in out.rglob("*.h5"):
        with h5py.File(path, "r") as f:
            assert f.attrs["budget"] == "auto" and f.attrs["n_kept"] == f["features"].shape[0] == len(f["indices"])
            sizes[path.stem] = int(f.attrs["n_kept"]), int(f.attrs["n_source"])
    assert len({k for k, _ in sizes.values()}) > 1  # sizes differ per slide
    assert all(abs(k - 0.05 * n) <= 9 for k, n in sizes.values())
    with pytest.raises(SystemExit):
        summarize(compose_config("summarize", [*over, "sampler=kcenter", "progress=false"], tmp_path / "k"))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: budget=auto needs a sampler that sets its own size (mosaic, sdm, splice); sampler=kcenter needs budget=K"
    ]
    ev = [f"data.root={tiny_cohort}", "task=syn_brca", "mil=meanpool", "folds=[0]", "trainer.max_epochs=1"]
    res = run_evaluation(compose_config("evaluate", [*ev, f"bags={out}", "logger=csv"], tmp_path / "run"))
    assert (res.label.sampler, res.label.budget) == ("mosaic", None)  # no single budget: left empty
    rows = {r["metric"]: r["value"] for r in res.rows}
    assert rows["patches_per_bag_max"] > rows["patches_per_bag"] and "test_auroc" in rows  # mean < max: sizes vary
