"""wsisum-summarize: summary bags equal their source rows, runs resume, bad slides don't stop a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsisum.data.bags import read_bag
from wsisum.data.cohort import Cohort
from wsisum.sampling.samplers import EntropySampler, KMeansSampler, LocationSampler, RandomSampler
from wsisum.summarize.run import summarize_cohort

SAMPLERS = {
    "random": RandomSampler(0),
    "kmeans": KMeansSampler(0, n_clusters=4),
    "entropy": EntropySampler(0),
    "location": LocationSampler(0),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_summary_rows_equal_source_rows(tmp_path: Path, small_cohort, name: str) -> None:
    root, feats = small_cohort
    out = tmp_path / "summ"
    report = summarize_cohort(Cohort(root), SAMPLERS[name], 6, out, progress=False)
    assert report.ok and sorted(report.done) == sorted(feats)
    for sid, f in feats.items():
        src = read_bag(root / "h5_files" / sid[:3] / f"{sid}.h5")
        summ = read_bag(out / sid[:3] / f"{sid}.h5")
        idx = summ.extras["indices"]
        assert len(idx) == min(6, len(f))
        np.testing.assert_array_equal(summ.features, src.features[idx])
        np.testing.assert_array_equal(summ.coords, src.coords[idx])
        assert summ.attrs["sampler"] == name and summ.attrs["budget"] == 6 and summ.attrs["seed"] == 0
        assert summ.attrs["source"] == f"h5_files/{sid[:3]}/{sid}.h5"  # relative, never absolute
        assert summ.attrs["n_source"] == len(f) and bool(summ.attrs["all_patches"]) == (len(f) <= 6)


def test_rerun_skips_and_other_recipe_is_refused(tmp_path: Path, small_cohort) -> None:
    root, feats = small_cohort
    out = tmp_path / "summ"
    summarize_cohort(Cohort(root), RandomSampler(0), 4, out, progress=False)
    again = summarize_cohort(Cohort(root), RandomSampler(0), 4, out, progress=False)
    assert again.done == [] and len(again.skipped) == len(feats)
    other = summarize_cohort(Cohort(root), RandomSampler(0), 5, out, progress=False)
    assert len(other.failed) == len(feats)
    assert all("exists with another recipe, budget=4 (this run: 5)" in m for m in other.failed.values())
    forced = summarize_cohort(Cohort(root), RandomSampler(0), 5, out, overwrite=True, progress=False)
    assert len(forced.done) == len(feats)


def test_bad_slide_reported_others_done(tmp_path: Path, small_cohort) -> None:
    root, feats = small_cohort
    bad = root / "h5_files" / "dsA" / "dsA-003.h5"
    with h5py.File(bad, "r+") as f:
        data = f["features"][()]
        data[2, 1] = np.nan
        f["features"][...] = data
    report = summarize_cohort(Cohort(root), KMeansSampler(0, n_clusters=3), 4, tmp_path / "s", progress=False)
    assert list(report.failed) == ["dsA-003"] and len(report.done) == len(feats) - 1
    assert (
        report.failed["dsA-003"]
        == f"{bad}: 'features' has non-finite values (NaN/Inf) in 1 of 12 rows (first bad row 2)"
    )
    assert not (tmp_path / "s" / "dsA" / "dsA-003.h5").exists()


def test_workers_match_in_process(tmp_path: Path, small_cohort) -> None:
    root, feats = small_cohort
    sampler = KMeansSampler(0, n_clusters=3)
    summarize_cohort(Cohort(root), sampler, 5, tmp_path / "a", progress=False)
    report = summarize_cohort(Cohort(root), sampler, 5, tmp_path / "b", workers=2, progress=False)
    assert report.ok
    for sid in feats:
        a = read_bag(tmp_path / "a" / sid[:3] / f"{sid}.h5").extras["indices"]
        b = read_bag(tmp_path / "b" / sid[:3] / f"{sid}.h5").extras["indices"]
        np.testing.assert_array_equal(a, b)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsisum.apps.summarize", *args, "progress=false"]


def test_cli_reports_bad_slide_and_exits_nonzero(tmp_path: Path, small_cohort) -> None:
    root, feats = small_cohort
    (root / "h5_files" / "dsB" / "dsB-001.h5").write_bytes(b"truncated")
    out = tmp_path / "summ"
    r = subprocess.run(
        _cli(f"data.root={root}", "sampler=random", "budget=3", f"out_dir={out}", "workers=0"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "1 slide(s) failed:" in r.stderr and "dsB-001.h5: unreadable HDF5" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(list(out.rglob("*.h5"))) == len(feats) - 1


def test_cli_unknown_root_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        _cli(f"data.root={tmp_path}/none", "budget=3", f"out_dir={tmp_path}/o"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        r.returncode == 1
        and r.stderr.strip()
        == f"error: {tmp_path}/none: cohort root not found (expected h5_files/<dataset>/<slide_id>.h5)"
    )


def test_ddp_path_writes_the_same_summaries(tmp_path: Path, small_cohort) -> None:
    import lightning as L

    root, feats = small_cohort
    sampler = KMeansSampler(0, n_clusters=3)
    summarize_cohort(Cohort(root), sampler, 5, tmp_path / "single", progress=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False)
    report = summarize_cohort(Cohort(root), sampler, 5, tmp_path / "ddp", trainer=trainer, progress=False)
    assert report.ok and sorted(report.done) == sorted(feats)
    for sid in feats:
        a = read_bag(tmp_path / "single" / sid[:3] / f"{sid}.h5")
        b = read_bag(tmp_path / "ddp" / sid[:3] / f"{sid}.h5")
        np.testing.assert_array_equal(a.extras["indices"], b.extras["indices"])
        np.testing.assert_array_equal(a.features, b.features)
        assert {k: v for k, v in a.attrs.items() if k != "score"} == {k: v for k, v in b.attrs.items() if k != "score"}
        assert np.isnan(a.attrs["score"]) and np.isnan(b.attrs["score"])  # k-means has no summary score
    assert not (tmp_path / "ddp" / ".wsisum_outcomes").exists()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False)
    again = summarize_cohort(Cohort(root), sampler, 5, tmp_path / "ddp", trainer=trainer, progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(feats)
