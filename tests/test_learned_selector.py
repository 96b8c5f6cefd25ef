"""The learned selector of the default summary (sampler=wsisum, learned_share): its relaxation, its determinism, and a planted signal
that only the teachers see, found by it and missed by kcenter and by the default."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import read_embedding, write_embedding
from wsisum.errors import InputError
from wsisum.sampling.coresets import KCenterSampler
from wsisum.sampling.learned import LearnedSummarySampler
from wsisum.sampling.relaxed_topk import relaxed_topk, straight_through_topk
from wsisum.sampling.stratified import StratifiedSummarySampler

DIM, PATCHES, SLIDES, CARRIER = 16, 160, 48, 0.2


def test_straight_through_is_the_hard_subset_in_value_with_a_gradient() -> None:
    logits = torch.randn(3, 20, requires_grad=True)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 5:] = False  # 5 real patches: k is clipped to them
    hard, weight, _ = straight_through_topk(logits, mask, 8, tau=0.5, noise=False)
    assert hard.sum(1).tolist() == [8, 5, 8]
    assert torch.allclose(weight.detach(), hard.float(), atol=1e-6)
    assert torch.equal(hard[0], torch.zeros(20, dtype=torch.bool).index_fill(0, logits[0].topk(8).indices, True))
    (weight * torch.arange(20.0)).sum().backward()
    assert logits.grad is not None and logits.grad[0].abs().sum() > 0 and logits.grad[1, 5:].abs().sum() == 0
    soft = relaxed_topk(logits.detach().masked_fill(~mask, float("-inf")), torch.tensor([8, 5, 8]), 0.5)
    assert torch.allclose(soft.sum(1), torch.tensor([8.0, 5.0, 8.0]), atol=1e-4)


def planted_cohort(root: Path, seed: int = 0) -> np.ndarray:
    """SLIDES slides of three common tissues and a few far outliers. The carrier tissue (CARRIER of each
    slide, in the bulk, neither rare nor isolated) is shifted along one direction by a per-slide amount
    z (0.5 of its spread); the teachers are z plus noise: only they see it. Returns z per slide."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, DIM)) * 1.5
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    z = rng.normal(size=SLIDES)
    loadings = {"TITAN": rng.normal(size=6), "CHIEF": rng.normal(size=4)}  # each teacher: z in its own dims
    for i in range(SLIDES):
        sid = f"pl-{i:03d}"
        kind = rng.choice(3, PATCHES, p=[0.45, 0.35, CARRIER])
        feats = means[kind] + rng.normal(size=(PATCHES, DIM))
        feats[kind == 2] += 0.5 * z[i] * direction
        feats[:4] = rng.normal(size=(4, DIM)) * 6.0  # far outliers: what kcenter goes for
        kind[:4] = -1
        coords = np.stack([np.arange(PATCHES) % 16, np.arange(PATCHES) // 16], 1).astype(np.int64) * 256
        write_bag(root / "h5_files" / "pl" / f"{sid}.h5", feats.astype(np.float32), coords, attrs={"slide_id": sid})
        (root / "kinds").mkdir(parents=True, exist_ok=True)
        np.save(root / "kinds" / f"{sid}.npy", kind)
        for t, loading in loadings.items():
            emb = z[i] * loading + 0.1 * rng.normal(size=len(loading))
            write_embedding(root / "slide_embeddings" / "pl" / t / f"{sid}.h5", emb)
    return z


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Cohort, Path]:
    base = tmp_path_factory.mktemp("planted")
    planted_cohort(base / "cohort")
    return base / "cohort", Cohort(base / "cohort"), base / "cache"


def carrier_share(root: Path, sampler, budget: int = 16) -> float:
    shares = []
    for path in sorted((root / "h5_files" / "pl").glob("*.h5")):
        feats = read_bag(path).features
        kind = np.load(root / "kinds" / f"{path.stem}.npy")
        chosen = sampler.select(feats, budget, slide_id=path.stem, dataset="pl").indices
        shares.append(float(np.mean(kind[chosen] == 2)))
    return float(np.mean(shares))


def learned(cohort: Cohort, cache: Path, **options) -> LearnedSummarySampler:
    sampler = LearnedSummarySampler(n_clusters=4, rarity="slide", **options)
    sampler.prepare(cohort, cache)
    return sampler


def test_planted_teacher_signal_is_found_by_the_learned_selection_and_missed_by_kcenter(planted) -> None:
    root, cohort, cache = planted
    found = carrier_share(root, learned(cohort, cache, learned_share=1.0))
    kcenter = carrier_share(root, KCenterSampler(seed=0))
    default = carrier_share(root, StratifiedSummarySampler(n_clusters=4, rarity="slide"))
    assert found >= 0.6, f"learned selection keeps {found:.2f} carrier patches (slide share {CARRIER})"
    assert kcenter <= 0.3 and default <= 0.3, f"kcenter keeps {kcenter:.2f}, the default {default:.2f}"


@pytest.mark.slow
def test_one_start_can_miss_it_and_restarts_keep_the_best(planted) -> None:
    """Why `restarts`: the top-k fit is not convex; the best of 4 starts finds what some single starts miss."""
    root, cohort, cache = planted
    singles = [carrier_share(root, learned(cohort, cache, learned_share=1.0, restarts=1, seed=s)) for s in range(4)]
    best = carrier_share(root, learned(cohort, cache, learned_share=1.0, restarts=4))
    assert min(singles) < 0.5 <= best, f"single starts {singles}, best of 4 {best:.2f}"


def test_learned_selection_is_deterministic_for_a_seed_and_cached(planted, tmp_path: Path) -> None:
    root, cohort, _ = planted
    path = sorted((root / "h5_files" / "pl").glob("*.h5"))[0]
    feats = read_bag(path).features
    first, second = (learned(cohort, tmp_path / f"cache{i}", seed=3, restarts=1, learned_share=0.5) for i in range(2))
    runs = [s.select(feats, 16, slide_id=path.stem, dataset="pl") for s in (first, second)]
    assert np.array_equal(runs[0].indices, runs[1].indices)
    assert runs[0].attrs["n_preferred"] == round(0.5 * (16 - runs[0].attrs["n_quota"]))
    assert len(list((tmp_path / "cache0").glob("attention-*.npz"))) == 1


def test_without_slide_embeddings_the_summary_is_the_default(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    planted_cohort(root)
    shutil.rmtree(root / "slide_embeddings")
    cohort = Cohort(root)
    sampler = learned(cohort, tmp_path / "cache")
    default = StratifiedSummarySampler(n_clusters=4, rarity="slide")
    feats = read_bag(root / "h5_files" / "pl" / "pl-000.h5").features
    a, b = (s.select(feats, 16, slide_id="pl-000", dataset="pl").indices for s in (sampler, default))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("key", ["learned_share=1.5", "candidate_factor=0", "select_size=0"])
def test_bad_options_are_one_line(key: str) -> None:
    name, value = key.split("=")
    with pytest.raises(InputError, match=f"sampler.{name}"):
        LearnedSummarySampler(**{name: float(value)})


def real_pseudo_cohort(real: Path, root: Path, slides: int = 24, per_slide: int = 250) -> dict[str, np.ndarray]:
    """Pseudo-slides of the real TCGA slide's CONCH patches (random subsets), one of its common
    regions (a k-means cluster near a fifth of the slide) shifted by 0.5 of its spread times a
    per-slide z; each slide's TITAN, CHIEF and PRISM are the real embeddings, at their real, very
    different scales, moved by z along a direction of their own. Returns slide -> region mask."""
    from wsisum.sampling.kmeans import kmeans

    bag = read_bag(real / "wsisum_demo" / "h5_files" / "tcga_brca" / "TCGA-3C-AALI-01.h5")
    x = np.asarray(bag.features, dtype=np.float32)
    assign = kmeans(x, 5, seed=0).assign
    shares = np.bincount(assign, minlength=5) / len(x)
    region = assign == int(np.argmin(np.abs(shares - 0.2)))
    direction = np.random.default_rng(1).normal(size=x.shape[1])
    shift = 0.5 * float(np.linalg.norm(x[region].std(0))) * direction / np.linalg.norm(direction)
    teachers = {
        t: read_embedding(real / "wsisum_demo" / "slide_embeddings" / "tcga_brca" / t / "TCGA-3C-AALI-01.h5")
        for t in ("TITAN", "CHIEF", "PRISM")
    }
    rng, truth = np.random.default_rng(2), {}
    for i in range(slides):
        sid, z = f"real-{i:02d}", rng.normal()
        keep = np.sort(rng.choice(len(x), per_slide, replace=False))
        feats = x[keep] + np.outer(region[keep], z * shift)
        write_bag(root / "h5_files" / "pl" / f"{sid}.h5", feats.astype(np.float32), bag.coords[keep])
        truth[sid] = region[keep]
        for t, emb in teachers.items():
            scale = float(np.linalg.norm(emb))
            way = np.random.default_rng(len(t)).normal(size=emb.shape[-1])
            noise = 0.02 * rng.normal(size=way.size) / np.sqrt(way.size)  # a fifth of the signal's norm
            moved = emb.reshape(-1) + scale * (0.1 * z * way / np.linalg.norm(way) + noise)
            write_embedding(root / "slide_embeddings" / "pl" / t / f"{sid}.h5", moved)
    return truth


def test_real_features_and_real_teacher_scales_end_to_end(real_data: Path, tmp_path: Path) -> None:
    """On real CONCH features with the real TITAN/CHIEF/PRISM scales (norms ~15, ~7, ~34), the fitted
    selector puts the region that moves the teachers into the summary: at least twice its share of
    the slide, where kcenter keeps at most about its share."""
    truth = real_pseudo_cohort(real_data, tmp_path / "cohort")
    cohort = Cohort(tmp_path / "cohort")
    sampler = learned(cohort, tmp_path / "cache", learned_share=1.0)
    share = {"learned": [], "kcenter": [], "slide": []}
    for sid, region in truth.items():
        feats = read_bag(cohort[sid].bag_path).features
        share["slide"].append(region.mean())
        share["learned"].append(region[sampler.select(feats, 16, slide_id=sid, dataset="pl").indices].mean())
        share["kcenter"].append(region[KCenterSampler(seed=0).select(feats, 16, slide_id=sid).indices].mean())
    mean = {k: float(np.mean(v)) for k, v in share.items()}
    assert mean["learned"] >= 2 * mean["slide"], mean
    assert mean["kcenter"] <= 1.5 * mean["slide"], mean
