"""One clustering per slide per study: shared, invalidated by a changed bag, safe with concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import make_cohort
from wsisum.data.cohort import Cohort
from wsisum.sampling.cluster_cache import ClusterStore, stats_since, stats_snapshot
from wsisum.sampling.kmeans import kmeans
from wsisum.sampling.samplers import KMeansSampler
from wsisum.summarize.run import summarize_cohort
from wsisum.summarize.search import WSISumSampler


@pytest.fixture
def cohort_root(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [300, 420, 250, 380, 500, 333]}, dim=16)
    return root


def _fill(directory: str, paths: list[str], k: int) -> None:
    """One writer process: cluster every bag through the shared store."""
    from wsisum.data.bags import read_bag

    store = ClusterStore(directory)
    for p in paths:
        store.kmeans(read_bag(p).features, k, seed=0, slide_id=Path(p).stem, source=p)


def test_two_processes_filling_the_cache_at_once_leave_valid_entries(cohort_root: Path, tmp_path: Path) -> None:
    paths = [str(r.bag_path) for r in Cohort(cohort_root).slides.values()]
    cache = tmp_path / "clusters"
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_fill, args=(str(cache), paths, 7)) for _ in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    entries = sorted(cache.glob("*.npz"))
    assert len(entries) == len(paths) and not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temp left
    from wsisum.data.bags import read_bag

    store, before = ClusterStore(cache), stats_snapshot()
    for p in paths:
        feats = read_bag(p).features
        cached = store.kmeans(feats, 7, seed=0, slide_id=Path(p).stem, source=p)
        fresh = kmeans(feats, 7, seed=0, slide_id=Path(p).stem)
        assert np.array_equal(cached.assign, fresh.assign) and np.array_equal(cached.centroids, fresh.centroids)
    assert stats_since(before) == {"kmeans_reused": len(paths)}


def test_a_changed_source_file_is_never_served_a_stale_entry(cohort_root: Path, tmp_path: Path) -> None:
    bag = next(iter(Cohort(cohort_root).slides.values())).bag_path
    with h5py.File(bag, "r") as f:
        feats = f["features"][()]
    store = ClusterStore(tmp_path / "clusters")
    store.kmeans(feats, 5, seed=0, slide_id="s", source=bag)
    before = stats_snapshot()
    assert ClusterStore(tmp_path / "clusters").kmeans(feats, 5, seed=0, slide_id="s", source=bag).k == 5
    assert stats_since(before) == {"kmeans_reused": 1}
    st = bag.stat()
    os.utime(bag, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: maybe rewritten
    before = stats_snapshot()
    ClusterStore(tmp_path / "clusters").kmeans(feats, 5, seed=0, slide_id="s", source=bag)
    assert stats_since(before) == {"kmeans_computed": 1}
    assert len(list((tmp_path / "clusters").glob("*.npz"))) == 2
    (tmp_path / "clusters" / "s.kmeans.damaged.npz").write_bytes(b"")  # never read: another key
    for entry in (tmp_path / "clusters").glob("*.npz"):
        entry.write_bytes(b"PK\x03\x04 truncated")  # a damaged entry is recomputed, not trusted
    before = stats_snapshot()
    km = ClusterStore(tmp_path / "clusters").kmeans(feats, 5, seed=0, slide_id="s", source=bag)
    assert stats_since(before) == {"kmeans_computed": 1} and np.array_equal(
        km.assign, kmeans(feats, 5, seed=0, slide_id="s").assign
    )


def _summaries(out: Path) -> dict[str, bytes]:
    found = {}
    for p in sorted(out.rglob("*.h5")):
        with h5py.File(p, "r") as f:
            found[p.name] = f["indices"][()].tobytes() + f["features"][()].tobytes()
    return found


def test_the_cached_path_gives_byte_identical_summaries_and_clusters_each_slide_once(
    cohort_root: Path, tmp_path: Path
) -> None:
    cohort = Cohort(cohort_root)
    n = len(cohort)
    cache = tmp_path / "cache"
    runs = [
        (KMeansSampler(n_clusters=6), 16),
        (KMeansSampler(n_clusters=6), 32),
        (WSISumSampler(n_clusters=6, pool_size=128), 16),
    ]
    counts = []
    for i, (sampler, budget) in enumerate(runs):
        summarize_cohort(cohort, sampler, budget, tmp_path / f"plain{i}", progress=False)  # no cache dir
        report = summarize_cohort(cohort, sampler, budget, tmp_path / f"cached{i}", progress=False, cache_dir=cache)
        assert report.ok
        counts.append(report.clusters)
        assert _summaries(tmp_path / f"plain{i}") == _summaries(tmp_path / f"cached{i}")
    # the first run clusters every slide; the other budget and wsisum's pool reuse it (same k and seed)
    assert counts[0]["kmeans_computed"] == n and "kmeans_reused" not in counts[0]
    assert counts[1] == {"kmeans_reused": n}
    assert counts[2].get("kmeans_computed", 0) == 0 and counts[2]["kmeans_reused"] >= n
    again = summarize_cohort(cohort, runs[0][0], 16, tmp_path / "again", progress=False, cache_dir=cache, workers=2)
    assert again.clusters == {"kmeans_reused": n}  # counted in the worker processes, reported here
    assert _summaries(tmp_path / "again") == _summaries(tmp_path / "plain0")
