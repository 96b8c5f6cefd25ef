"""Cohort rarity: a lesion that few slides have outranks rarities that every slide has."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.sampling import cohort_rarity
from wsisum.sampling.cohort_rarity import Codebook, cohort_codebook, fit_codebook
from wsisum.summarize.run import summarize_cohort
from wsisum.summarize.search import WSISumSampler

DIM, N_COMMON_RARE, N_SLIDES = 16, 40, 20


def rare_cohort(root: Path) -> dict[str, np.ndarray]:
    """20 slides of two big tissues plus forty 3-patch morphologies found on EVERY slide (blood, fat:
    isolated within a slide, common in the cohort); every other slide also has a 3-patch lesion.
    Returns slide id -> lesion rows (empty for lesion-free slides)."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1.0, (3 + N_COMMON_RARE, DIM)) * 3  # 0, 1: tissue; 2: lesion; 3+: common rarities
    lesions = {}
    for i in range(N_SLIDES):
        labels = [0] * 350 + [1] * 230 + [m for m in range(3, 3 + N_COMMON_RARE) for _ in range(3)]
        if i % 2 == 0:
            labels += [2, 2, 2]
        labels = np.asarray(labels)[rng.permutation(len(labels))]
        x = means[labels] + rng.normal(0, 0.3, (len(labels), DIM))
        coords = np.stack([np.arange(len(x)) % 25, np.arange(len(x)) // 25], 1).astype(np.int64) * 256
        sid = f"s{i:02d}"
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", x.astype(np.float32), coords, attrs={"slide_id": sid})
        lesions[sid] = np.flatnonzero(labels == 2)
    return lesions


def test_codebook_gives_the_lesion_the_highest_idf(tmp_path: Path) -> None:
    lesions = rare_cohort(tmp_path)
    cohort = Cohort(tmp_path)
    bags = [(sid, rec.bag_path) for sid, rec in cohort.slides.items()]
    book = fit_codebook(bags, n_words=128, per_slide=400, seed=0)
    assert book.centroids.shape == (cohort_rarity.N_BOOKS, 128, DIM) and book.n_slides == N_SLIDES
    x = read_bag(cohort.slides["s00"].bag_path).features
    idf = book.patch_idf(x)
    lesion = lesions["s00"]
    others = np.setdiff1d(np.arange(len(x)), lesion)
    assert idf[lesion].min() > np.quantile(idf[others], 0.99)  # half the slides lack it: idf ~ log 2
    assert idf[lesion].mean() == pytest.approx(np.log(2), abs=0.25)
    # too few slides to tell: no prior; mixed feature dims: no shared codebook
    few = fit_codebook(bags[:3], n_words=8, per_slide=50)
    np.testing.assert_array_equal(few.patch_idf(x), np.ones(len(x)))
    write_bag(tmp_path / "odd.h5", np.ones((5, DIM + 1), np.float32), np.zeros((5, 2), np.int64))
    assert fit_codebook([*bags, ("odd", tmp_path / "odd.h5")], n_words=8).n_slides == 0


def test_codebook_cache_serves_the_same_bags_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rare_cohort(tmp_path / "c")
    cohort = Cohort(tmp_path / "c")
    bags = [(sid, rec.bag_path) for sid, rec in cohort.slides.items()]
    first = cohort_codebook("ds", bags, tmp_path / "cache", n_words=16, per_slide=100)
    assert len(list((tmp_path / "cache").glob("codebook-v2-ds-*.npz"))) == 1

    def refit(*args, **kwargs) -> Codebook:
        raise AssertionError("fitted again")

    monkeypatch.setattr(cohort_rarity, "fit_codebook", refit)
    again = cohort_codebook("ds", bags, tmp_path / "cache", n_words=16, per_slide=100)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    np.testing.assert_array_equal(first.doc_freq, again.doc_freq)
    st = os.stat(bags[0][1])
    os.utime(bags[0][1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a changed bag: a new entry
    with pytest.raises(AssertionError, match="fitted again"):
        cohort_codebook("ds", bags, tmp_path / "cache", n_words=16, per_slide=100)


def kept_lesions(root: Path, out: Path, lesions: dict[str, np.ndarray], sampler: WSISumSampler) -> int:
    report = summarize_cohort(Cohort(root), sampler, 16, out, workers=0, progress=False, cache_dir=root / "cache")
    assert report.ok and len(report.done) == N_SLIDES
    hits = 0
    for sid, rows in lesions.items():
        if len(rows):
            idx = read_bag(out / "ds" / f"{sid}.h5").extras["indices"]
            hits += bool(set(rows) & set(idx))
    return hits


def test_cohort_rarity_keeps_the_lesion_at_16_patches(tmp_path: Path) -> None:
    lesions = rare_cohort(tmp_path)
    # 4 quota patches at 16 (composition_patches=0), so both rarities get the same number of picks
    cohort_hits = kept_lesions(tmp_path, tmp_path / "cohort", lesions, WSISumSampler(composition_patches=0))
    slide_hits = kept_lesions(
        tmp_path, tmp_path / "slide", lesions, WSISumSampler(rarity="slide", composition_patches=0)
    )
    n_lesion = sum(bool(len(r)) for r in lesions.values())
    assert cohort_hits == n_lesion  # 4 quota patches at 16: the lesion first on every lesion slide
    assert slide_hits < n_lesion  # within the slide the lesion is one of 41 equally isolated groups
    assert list((tmp_path / "cache").glob("codebook-v2-ds-*.npz"))  # fitted once, kept for the next run
