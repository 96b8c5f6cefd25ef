"""Synthetic worlds (`preset=worlds_tiny`): artifacts, sites, real feature geometry, PAM50-like subtypes
and teachers blind to artifacts; presets without the switches keep their cohorts."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from wsisum.data.ground_truth import ARTIFACT_MORPHOLOGIES, BACKGROUND_MORPHOLOGIES
from wsisum.data.synthetic import build_atlas, generate_cohort, parse_preset, slide_content, teacher_embedding
from wsisum.data.synthetic.calibration import average, feature_geometry
from wsisum.data.synthetic.preset import load_preset
from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.slide import latents_to_features
from wsisum.data.synthetic.spec import PAM50_CLASSES, morphology_names
from wsisum.report.lesions import lesion_names


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("worlds") / "cohort"
    return root, generate_cohort(root, load_preset("worlds_tiny"), seed=0, progress=False)


def _bags(root: Path, m: dict, ds: str):
    for sid in m["datasets"][ds]:
        with h5py.File(root / "h5_files" / ds / f"{sid}.h5", "r") as f:
            yield f["features"][()].astype(np.float64), f["morphology"][()], dict(f.attrs)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_artifacts_in_about_half_the_slides_with_truth_and_never_lesions(world) -> None:
    root, m = world
    names = m["morphologies"]
    art_codes = [names.index(a) for a in ARTIFACT_MORPHOLOGIES]
    assert names[-len(ARTIFACT_MORPHOLOGIES) :] == list(ARTIFACT_MORPHOLOGIES)
    assert m["artifact_morphologies"] == list(ARTIFACT_MORPHOLOGIES)
    assert not set(ARTIFACT_MORPHOLOGIES) & {n for v in m["lesion_morphologies"].values() for n in v}
    with_art, n = 0, 0
    for ds in m["datasets"]:
        for _, morph, attrs in _bags(root, m, ds):
            k = int(np.isin(morph, art_codes).sum())
            assert k == attrs["n_artifact_patches"] and k <= 0.06 * len(morph) + 3
            with_art += k > 0
            n += 1
    assert 0.25 <= with_art / n <= 0.75
    # without a manifest, artifact names are not lesions either
    _, lesions = lesion_names(None, names)
    assert not lesions & set(ARTIFACT_MORPHOLOGIES) and "tumour" in lesions


def test_artifact_patches_are_isolated_in_feature_space(world) -> None:
    root, m = world
    art_codes = [m["morphologies"].index(a) for a in ARTIFACT_MORPHOLOGIES]
    art_nn, tissue_nn = [], []
    for ds in m["datasets"]:
        for x, morph, _ in _bags(root, m, ds):
            art = np.isin(morph, art_codes)
            if not art.any():
                continue
            u = _unit(x)
            t = u[~art]
            tt = t @ t.T
            np.fill_diagonal(tt, -np.inf)
            tissue_nn.append(tt.max(axis=1).mean())
            art_nn.append((u[art] @ t.T).max(axis=1).mean())
    assert art_nn and np.mean(art_nn) < np.mean(tissue_nn) - 0.1


def test_teachers_do_not_see_artifacts() -> None:
    preset = parse_preset(load_preset("worlds_tiny"))
    atlas = build_atlas(preset, seed=0)
    rng = np.random.default_rng(1)
    n, pen = 200, atlas.index("pen")
    morph = rng.integers(0, 7, n)
    lesion = np.zeros(n, dtype=bool)
    lesion[:30] = True
    morph[:30] = atlas.index("idc")
    z = rng.standard_normal((n, preset.latent_dim))
    tissue = np.ones(n, dtype=bool)
    tissue[150:170] = False
    with_art = morph.copy()
    with_art[~tissue] = pen
    z_art = z.copy()
    z_art[~tissue] = 50.0
    stain = np.zeros(preset.feature_dim, dtype=np.float32)
    feats, mean_feat = latents_to_features(z_art, atlas, preset, stain, stream_rng(0, "x"), tissue=tissue)
    assert np.allclose(mean_feat, feats[tissue].astype(np.float64).mean(axis=0), atol=2e-3)
    a = slide_content(with_art, lesion, z_art, mean_feat, atlas, tissue)
    b = slide_content(morph[tissue], lesion[tissue], z[tissue], mean_feat, atlas)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
    t = atlas.teachers[0]
    ea = teacher_embedding(t, a, preset, stream_rng(0, "t"))
    eb = teacher_embedding(t, b, preset, stream_rng(0, "t"))
    np.testing.assert_array_equal(ea, eb)


def test_pam50_has_four_classes_that_differ_by_a_small_shift_of_one_tumour(world) -> None:
    root, m = world
    assert m["tasks"]["pam50"] == list(PAM50_CLASSES)
    labels = pd.read_csv(root / "labels" / "pam50.csv")
    assert set(labels["label"]) == set(PAM50_CLASSES)
    assert len(list((root / "splits" / "pam50").glob("splits_*.csv"))) == m["n_folds"]
    tumour = m["morphologies"].index("tumour")
    by_class: dict[str, list[np.ndarray]] = {c: [] for c in PAM50_CLASSES}
    for x, morph, attrs in _bags(root, m, "syn_pam50"):
        assert set(np.unique(morph)) & {tumour} and (morph == tumour).mean() > 0.1
        by_class[attrs["label"]].append(x[morph == tumour])
    pooled = np.concatenate([np.concatenate(v) for v in by_class.values()])
    spread = np.sqrt(np.trace(np.cov(pooled.T)))
    means = [np.concatenate(v).mean(axis=0) for v in by_class.values()]
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(means) for b in means[i + 1 :]]
    assert max(gaps) < spread and min(gaps) > 0.0  # class means (with case effects) inside one cloud
    # the shift is the preset's share of the tumour's per-patch spread, one fixed direction per class
    preset = parse_preset(load_preset("worlds_tiny"))
    atlas = build_atlas(preset, seed=0)
    assert set(atlas.class_dirs) == set(PAM50_CLASSES)
    assert all(np.isclose(np.linalg.norm(d), 1.0) for d in atlas.class_dirs.values())
    share = preset.datasets[[d.kind for d in preset.datasets].index("pam50")].lesion["subtype_shift"]
    assert 0 < share <= 0.4


def test_tumour_is_anchored_near_normal_epithelium_and_tighter() -> None:
    preset = parse_preset(load_preset("worlds_tiny"))
    atlas = build_atlas(preset, seed=0)
    epi = atlas.means[atlas.index("normal_epithelium")]
    for name in ("idc", "tumour", "metastasis"):
        assert np.isclose(np.linalg.norm(atlas.means[atlas.index(name)] - epi), preset.morphology["anchor_distance"])
    assert atlas.diags[atlas.index("tumour")].mean() < atlas.diags[atlas.index("stroma")].mean()
    assert len(atlas.sites) == preset.sites["n_sites"] > 0


def test_world_feature_geometry_is_in_the_real_range(world) -> None:
    root, m = world
    lesions = {n for v in m["lesion_morphologies"].values() for n in v}
    names = m["morphologies"]
    for ds in m["datasets"]:
        rows = []
        for x, morph, _ in _bags(root, m, ds):
            tumour = np.isin(morph, [names.index(n) for n in lesions])
            other = np.isin(morph, [names.index(n) for n in BACKGROUND_MORPHOLOGIES])
            rows.append(feature_geometry(x, tumour, other))
        g = average(rows)
        assert 0.4 <= g.cos_mean <= 0.7 and g.cos_p5 > 0.15, (ds, g)
        assert g.within_tumour > g.within_other, (ds, g)


def test_presets_without_worlds_keep_their_vocabulary() -> None:
    for name in ("tiny", "demo", "large"):
        p = parse_preset(load_preset(name))
        assert p.artifacts["slide_probability"] == 0 and p.sites["n_sites"] == 0
        assert p.features["common_weight"] == 0 and p.morphology["anchor_distance"] == 0
        assert not set(morphology_names(p)) & set(ARTIFACT_MORPHOLOGIES)


def test_worlds_manifest_names_every_task(world) -> None:
    root, m = world
    assert m["dataset_tasks"] == {
        "syn_regions": "regions",
        "syn_lesions": "lesions",
        "syn_pam50": "pam50",
        "syn_grades": "grades",
    }
    for task in m["tasks"]:
        assert (root / "labels" / f"{task}.csv").is_file()
    assert json.loads(json.dumps(m))["preset"]["artifacts"]["slide_probability"] == 0.5
