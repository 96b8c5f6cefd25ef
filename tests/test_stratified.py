"""The default summary (`sampler=wsisum`, wsisum/sampling/stratified.py): proportional composition,
rare findings kept, coverage, determinism, no torch, and the real annotated crop."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from wsisum.api import summarize_slide
from wsisum.errors import InputError
from wsisum.sampling.stratified import StratifiedSummarySampler, quota_size

CROP = "PrimaryTumor_HE_484"


def clustered_slide(n: int, d: int, seed: int, region_share: float = 0.0, lesion: int = 0):
    """Diffuse tissue of 12 morphologies, a tight region on `region_share` of the slide, and a
    `lesion`-patch finding far from everything. Returns features and the truth of both."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d)) * 1.5
    n_region = int(region_share * n)
    n_tissue = n - n_region - lesion
    x = centres[rng.integers(12, size=n_tissue)] + rng.normal(size=(n_tissue, d))
    region = centres[0] * 0.5 + rng.normal(size=d) * 1.5 + 0.3 * rng.normal(size=(n_region, d))
    finding = rng.normal(size=d) * 6 + 0.3 * rng.normal(size=(lesion, d))
    feats = np.concatenate([x, region, finding]).astype(np.float32)
    truth = np.zeros(n, dtype=int)
    truth[n_tissue : n_tissue + n_region] = 1
    truth[n_tissue + n_region :] = 2
    return feats, truth


def test_a_large_tight_region_keeps_its_share_and_a_small_finding_is_kept():
    feats, truth = clustered_slide(3000, 32, seed=1, region_share=0.3, lesion=3)
    for budget in (16, 64):
        shares, hits = [], []
        for seed in range(3):
            sel = summarize_slide(feats, None, budget, "wsisum", seed=seed, slide_id="s", rarity="slide")
            shares.append(np.mean(truth[sel.indices] == 1))
            hits.append(np.any(truth[sel.indices] == 2))
        assert np.mean(shares) >= 0.75 * 0.3, (budget, shares)
        assert all(hits), budget


def test_facility_alone_under_weights_the_tight_region_the_default_does_not():
    """Why the composition part exists: coverage gives a tight region one or two centres."""
    feats, truth = clustered_slide(3000, 32, seed=2, region_share=0.3)
    facility = summarize_slide(feats, None, 32, "facility", slide_id="s")
    default = summarize_slide(feats, None, 32, "wsisum", slide_id="s", rarity="slide")
    assert np.mean(truth[default.indices] == 1) > np.mean(truth[facility.indices] == 1)


def test_the_summary_is_deterministic_for_a_seed_and_differs_across_seeds():
    feats, _ = clustered_slide(2000, 16, seed=3, region_share=0.2, lesion=2)
    a = summarize_slide(feats, None, 32, "wsisum", seed=0, slide_id="s", rarity="slide").indices
    b = summarize_slide(feats, None, 32, "wsisum", seed=0, slide_id="s", rarity="slide").indices
    c = summarize_slide(feats, None, 32, "wsisum", seed=1, slide_id="s", rarity="slide").indices
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 32 and not np.array_equal(a, c)


def test_quota_composition_and_coverage_parts_add_up_to_the_budget():
    feats, _ = clustered_slide(1500, 16, seed=4, lesion=3)
    sel = StratifiedSummarySampler(seed=0, rarity="slide").select(feats, 64, slide_id="s")
    assert sel.attrs["n_quota"] == quota_size(64, 0.25, 4, 8) == 8
    assert sel.attrs["n_quota"] + sel.attrs["n_composition"] <= 64 and len(sel.indices) == 64


@pytest.mark.parametrize("option", [{"composition_share": 1.5}, {"summary_quota": -0.1}, {"rarity": "x"}])
def test_an_option_out_of_range_is_one_line_naming_it(option):
    with pytest.raises(InputError, match=next(iter(option))):
        StratifiedSummarySampler(**option)


def test_the_default_summary_never_imports_torch():
    code = (
        "import sys, numpy as np\n"
        "from wsisum.api import summarize_slide\n"
        "x = np.random.default_rng(0).normal(size=(3000, 64)).astype('float32')\n"
        "sel = summarize_slide(x, None, 64, 'wsisum', slide_id='s')\n"
        "assert len(sel.indices) == 64\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("encoder", ["conch", "uni"])
def test_real_crop_summary_keeps_the_tumour_share(real_data, encoder):
    """The real HANCOCK crop (pathologist's tumour on 21 % of 248 patches): the default summary holds
    at least 0.75 of the slide's tumour share at 16 and at 64 patches (mean over 3 seeds)."""
    root = real_data / "hancock_crop"
    tumour = np.load(root / "truth" / f"{CROP}.npz")["tumour"]
    with h5py.File(root / "h5_files" / f"hancock_{encoder}" / f"{CROP}.h5", "r") as f:
        feats, coords = f["features"][:], f["coords"][:]
    for budget in (16, 64):
        share = np.mean(
            [
                tumour[summarize_slide(feats, coords, budget, "wsisum", seed=s, slide_id=CROP).indices].mean()
                for s in range(3)
            ]
        )
        assert share >= 0.75 * tumour.mean(), (encoder, budget, share, tumour.mean())
    if encoder == "conch":  # the tight CONCH tumour: facility location gives it too few centres
        facility = np.mean(
            [tumour[summarize_slide(feats, coords, 16, "facility", seed=s).indices].mean() for s in range(3)]
        )
        assert facility < 0.75 * tumour.mean(), facility
