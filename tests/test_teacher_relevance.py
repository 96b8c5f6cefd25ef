"""Teacher relevance of visual words (wsisum/sampling/teacher_relevance.py): the words the slide
embeddings react to score far above 1, words they ignore score about 1, and the default summary's
quota then takes a planted lesion rather than an equally isolated artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import write_embedding
from wsisum.sampling.cohort_rarity import Codebook
from wsisum.sampling.stratified import StratifiedSummarySampler
from wsisum.sampling.teacher_relevance import fit_relevance, standardised_targets, word_relevance


def test_a_word_the_teachers_follow_scores_high_and_an_ignored_one_about_one():
    rng = np.random.default_rng(0)
    s, w = 400, 3
    presence = rng.random((1, s, w)) < 0.5  # word 0: the teachers follow it; 1, 2: they do not
    targets = rng.normal(size=(s, 16))
    targets[:, 0] += 2.0 * presence[0, :, 0]
    stat = word_relevance(presence, targets / np.sqrt(16))
    assert stat[0, 0] > 15  # a shift of 2 sd on one of 16 dims: n1 n0 / S * 4 / 16 ~ 25; no shift: ~1
    assert 0.3 < stat[0, 1] < 3 and 0.3 < stat[0, 2] < 3
    # a word on every slide (or none) says nothing: no contrast, no relevance
    everywhere = np.ones((1, s, 1), bool)
    assert word_relevance(everywhere, targets)[0, 0] == 0.0


def test_each_teacher_weighs_the_same_whatever_its_scale_or_width():
    rng = np.random.default_rng(1)
    ids = tuple(f"s{i}" for i in range(50))
    small = {sid: rng.normal(size=8) for sid in ids}
    wide = {sid: 100 * rng.normal(size=512) for sid in ids}
    targets, keep = standardised_targets(ids, lambda sid: {"A": small[sid], "B": wide[sid]})
    assert keep.all() and targets.shape == (50, 520)
    energy_a, energy_b = (targets[:, :8] ** 2).sum(), (targets[:, 8:] ** 2).sum()
    assert abs(energy_a - energy_b) / energy_b < 1e-6


def test_without_per_slide_presence_or_teachers_there_is_no_relevance():
    book = Codebook(np.zeros((1, 2, 4), np.float32), np.ones((1, 2)), 20)
    assert fit_relevance(book, lambda sid: {}) is None
    book.presence, book.slide_ids = np.ones((1, 20, 2), bool), tuple(f"s{i}" for i in range(20))
    assert fit_relevance(book, lambda sid: {}) is None


def planted_cohort(root: Path, n_slides: int = 24, n: int = 600, d: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Every slide: tissue + a 3-patch isolated artifact (the teachers ignore it); half the slides
    also a 3-patch lesion, as isolated, that moves both teachers' embeddings (of unlike scales and
    widths). Returns slide -> {kind: its rows} and writes the contract layout under `root`."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(4, d)) * 2
    artifact_centre, lesion_centre = rng.normal(size=d) * 8, rng.normal(size=d) * 8
    planted = {}
    for i in range(n_slides):
        sid = f"s{i:02d}"
        x = centres[rng.integers(4, size=n)] + rng.normal(size=(n, d))
        rows = rng.permutation(n)[:6]
        x[rows[:3]] = artifact_centre + 0.3 * rng.normal(size=(3, d))
        has_lesion = i % 2 == 0
        if has_lesion:
            x[rows[3:]] = lesion_centre + 0.3 * rng.normal(size=(3, d))
        planted[sid] = {"artifact": rows[:3], "lesion": rows[3:] if has_lesion else rows[:0]}
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", x.astype(np.float32), np.zeros((n, 2), np.int64))
        emb = root / "slide_embeddings" / "ds"
        write_embedding(emb / "T1" / f"{sid}.h5", rng.normal(size=32) + 3.0 * has_lesion)
        write_embedding(emb / "T2" / f"{sid}.h5", 10 * (rng.normal(size=64) - 3.0 * has_lesion))
    return planted


def test_the_quota_takes_the_lesion_the_teachers_see_not_the_artifact(tmp_path: Path):
    planted = planted_cohort(tmp_path / "c")
    cohort = Cohort(tmp_path / "c")
    kept = {}
    for rarity in ("teacher", "slide"):
        sampler = StratifiedSummarySampler(seed=0, rarity=rarity, n_clusters=8, quota_max=1, codebook_words=16)
        sampler.prepare(cohort, tmp_path / "cache")
        assert ("ds" in sampler.word_weights) == (rarity == "teacher")
        kept[rarity] = {"lesion": 0, "artifact": 0}
        for sid, rows in planted.items():
            if len(rows["lesion"]):
                x = read_bag(cohort[sid].bag_path).features
                km = sampler.clusters.kmeans(x, 8, seed=0, slide_id=sid)
                quota = sampler.quota(x, km, 1, np.random.default_rng(0), "ds")
                kept[rarity]["lesion"] += int(np.isin(quota, rows["lesion"]).any())
                kept[rarity]["artifact"] += int(np.isin(quota, rows["artifact"]).any())
    assert kept["teacher"]["lesion"] >= 11 and kept["teacher"]["artifact"] <= 1, kept  # of 12 lesion slides
    assert kept["slide"]["artifact"] >= 3, kept  # isolation alone cannot tell them apart
