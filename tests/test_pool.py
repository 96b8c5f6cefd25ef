"""Training pools: new patches every epoch, deterministic per (seed, slide, epoch), clusters cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wsisum.sampling.pool import ClusterCache, PoolTransform, grid_positions


def _item(n=2000, d=8, path="x.h5"):
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    coords = torch.from_numpy(np.stack([np.arange(n) % 50, np.arange(n) // 50], 1) * 512 + 1024)
    return {"slide_id": "s1", "features": feats, "coords": coords, "path": path}


def test_pool_per_epoch(tmp_path: Path) -> None:
    src = tmp_path / "s1.h5"
    src.write_bytes(b"x")
    t = PoolTransform(pool_size=100, n_clusters=10, seed=0, cache_dir=tmp_path / "cache")
    a = t(_item(path=str(src)))
    assert a["features"].shape == (100, 8) and len(torch.unique(a["pool_indices"])) == 100
    t.epoch = 1
    b = t(_item(path=str(src)))
    assert not torch.equal(a["pool_indices"], b["pool_indices"])
    t2 = PoolTransform(pool_size=100, n_clusters=10, seed=0, cache_dir=tmp_path / "cache")
    t2.epoch = 1
    assert torch.equal(t2(_item(path=str(src)))["pool_indices"], b["pool_indices"])
    assert len(list((tmp_path / "cache").glob("s1.*.npz"))) == 1
    small = PoolTransform(pool_size=5000)(_item(n=30))
    assert small["features"].shape[0] == 30


def test_cache_reused_and_invalidated(tmp_path: Path) -> None:
    src = tmp_path / "s.h5"
    src.write_bytes(b"x")
    feats = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    cache = ClusterCache(tmp_path / "c", 5, 0)
    a = cache.assignments("s", feats, str(src))
    fresh = ClusterCache(tmp_path / "c", 5, 0)
    np.testing.assert_array_equal(fresh.assignments("s", feats, str(src)), a)
    src.write_bytes(b"changed!")  # a rewritten source bag gets a new cache entry
    ClusterCache(tmp_path / "c", 5, 0).assignments("s", feats, str(src))
    assert len(list((tmp_path / "c").glob("s.*.npz"))) == 2


def test_grid_positions() -> None:
    coords = torch.tensor([[1024, 2048], [1536, 2048], [1024, 3072], [-1, -1]])
    pos = grid_positions(coords)
    assert pos.tolist() == [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]
    assert grid_positions(torch.full((3, 2), -1)).abs().sum() == 0
