"""Bag I/O: round trips in both formats and one clear error line for every kind of bad file."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsisum.data.atomic import atomic_path, remove_stale_temps
from wsisum.data.bags import bag_info, read_bag, write_bag
from wsisum.data.embeddings import read_embedding, write_embedding
from wsisum.errors import InputError


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_h5_round_trip_keeps_dtype_coords_attrs_extras(tmp_path: Path, dtype) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(17, 24)).astype(dtype)
    coords = rng.integers(0, 10_000, size=(17, 2))
    path = write_bag(
        tmp_path / "s1.h5",
        feats,
        coords,
        attrs={"sampler": "kmeans", "budget": 8},
        coords_attrs={"patch_size_level0": 512},
        extras={"indices": np.arange(17)},
    )
    bag = read_bag(path)
    assert bag.features.dtype == dtype and bag.dim == 24 and bag.n_patches == 17
    np.testing.assert_array_equal(bag.features, feats)
    np.testing.assert_array_equal(bag.coords, coords)
    np.testing.assert_array_equal(bag.extras["indices"], np.arange(17))
    assert bag.attrs == {"sampler": "kmeans", "budget": 8}
    assert bag.coords_attrs == {"patch_size_level0": 512}
    assert bag.slide_id == "s1"
    info = bag_info(path)
    assert (info.n_patches, info.dim, info.has_coords) == (17, 24, True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pt_round_trip_features_only(tmp_path: Path, dtype) -> None:
    feats = torch.randn(9, 5).to(dtype)
    torch.save(feats, tmp_path / "a.pt")
    bag = read_bag(tmp_path / "a.pt")
    assert bag.coords is None and bag.features.dtype == feats.numpy().dtype
    np.testing.assert_array_equal(bag.features, feats.numpy())
    write_bag(tmp_path / "b.pt", bag.features)
    np.testing.assert_array_equal(read_bag(tmp_path / "b.pt").features, feats.numpy())
    assert bag_info(tmp_path / "b.pt").dim == 5


def test_pt_dict_with_coords(tmp_path: Path) -> None:
    torch.save({"features": torch.ones(3, 2), "coords": torch.zeros(3, 2, dtype=torch.long)}, tmp_path / "c.pt")
    bag = read_bag(tmp_path / "c.pt")
    assert bag.coords.shape == (3, 2)


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


def _truncated(path: Path) -> Path:
    write_bag(path, np.ones((400, 64), np.float32), np.zeros((400, 2), np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_CASES = {
    "missing": (lambda p: p, "file not found"),
    "truncated": (_truncated, "unreadable HDF5"),
    "garbage": (lambda p: (p.write_bytes(b"not an hdf5 file at all" * 10), p)[1], "unreadable HDF5"),
    "no_features": (lambda p: _h5(p, coords=np.zeros((3, 2))), "no 'features' dataset"),
    "features_1d": (lambda p: _h5(p, features=np.ones(5)), "must be 2-D"),
    "features_3d": (lambda p: _h5(p, features=np.ones((1, 5, 4))), "must be 2-D"),
    "coords_count": (lambda p: _h5(p, features=np.ones((5, 4)), coords=np.zeros((4, 2))), "'coords' has 4 rows"),
    "coords_shape": (lambda p: _h5(p, features=np.ones((5, 4)), coords=np.zeros((5, 3))), "'coords' must be (N, 2)"),
    "nan": (lambda p: _h5(p, features=np.array([[1.0, np.nan], [0, 0], [np.nan, 1]])), "non-finite values"),
    "inf": (lambda p: _h5(p, features=np.array([[1.0, 2], [np.inf, 0]], np.float16)), "non-finite values"),
    "empty": (lambda p: _h5(p, features=np.zeros((0, 4))), "empty bag"),
    "strings": (lambda p: _h5(p, features=np.array([[b"a", b"b"]])), "non-numeric"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_bag_gives_one_line_naming_file(tmp_path: Path, case: str) -> None:
    make, expected = BAD_CASES[case]
    path = make(tmp_path / f"{case}.h5")
    with pytest.raises(InputError) as err:
        read_bag(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)) and expected in msg, msg
    if case not in ("nan", "inf"):  # values are not read by the header check
        with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            bag_info(path)


def test_nan_message_names_first_bad_row(tmp_path: Path) -> None:
    feats = np.ones((10, 3), np.float32)
    feats[[4, 7], 1] = np.nan
    path = _h5(tmp_path / "x.h5", features=feats)
    with pytest.raises(InputError, match=r"in 2 of 10 rows \(first bad row 4\)"):
        read_bag(path)
    assert read_bag(path, check_values=False).n_patches == 10


def test_corrupt_pt_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match=r"unreadable \.pt file"):
        read_bag(path)
    torch.save({"feats": torch.ones(2, 2)}, tmp_path / "nokey.pt")
    with pytest.raises(InputError, match="no 'features' entry"):
        read_bag(tmp_path / "nokey.pt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "s.h5"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    # a temp left by a killed process (no cleanup ran) is recognised and removed
    (target.parent / ".tmp-s.h5.abc.part").write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1


def test_write_refuses_empty_or_mismatched(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="refusing"):
        write_bag(tmp_path / "e.h5", np.zeros((0, 3)))
    with pytest.raises(InputError, match="'coords' has 2 rows"):
        write_bag(tmp_path / "m.h5", np.zeros((3, 3)), np.zeros((2, 2)))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("shape", [(1, 7), (7,)])
def test_embedding_shapes(tmp_path: Path, shape) -> None:
    _h5(tmp_path / "e.h5", features=np.arange(7, dtype=np.float64).reshape(shape))
    emb = read_embedding(tmp_path / "e.h5")
    assert emb.shape == (7,) and emb.dtype == np.float32


def test_embedding_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        read_embedding(tmp_path / "none.h5")
    _h5(tmp_path / "bad.h5", features=np.ones((2, 7)))
    with pytest.raises(InputError, match=r"shape \(1, D\) or \(D,\)"):
        read_embedding(tmp_path / "bad.h5")
    _h5(tmp_path / "nan.h5", features=np.array([1.0, np.nan]))
    with pytest.raises(InputError, match="non-finite"):
        read_embedding(tmp_path / "nan.h5")
    write_embedding(tmp_path / "ok.h5", np.ones(4))
    with h5py.File(tmp_path / "ok.h5") as f:
        assert f["features"].shape == (1, 4)


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_bag(tmp_path / "p.h5", np.ones((2, 2), np.float32))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: a shared cohort stays readable
