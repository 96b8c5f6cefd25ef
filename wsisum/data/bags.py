"""Patch-feature bags in the CLAM/TRIDENT schema: `.h5` (features, coords, attrs) and CLAM `.pt`.

A bag is one slide: `features` (N, D) float16/float32 and `coords` (N, 2) level-0 pixel positions.
D always comes from the file. Every reader validates, and every problem becomes one `InputError`
line naming the file, because users feed us thousands of files produced by other tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.data.hdf5 import missing_dataset, open_dataset, plain_attrs, read_h5_header, reading_h5
from wsisum.errors import InputError, short_error

BAG_SUFFIXES = (".h5", ".pt")


@dataclass
class Bag:
    """The content of one bag file. `extras` holds other per-patch datasets (e.g. `indices`)."""

    features: np.ndarray
    coords: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    path: str | None = None

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def slide_id(self) -> str | None:
        return None if self.path is None else Path(self.path).stem


@dataclass(frozen=True)
class BagInfo:
    """What a cheap header read tells about a bag (no feature data is loaded)."""

    path: str
    n_patches: int
    dim: int
    dtype: str
    has_coords: bool


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "is not a file")


def _check_features_shape(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise InputError(path, f"'features' must be 2-D (N, D), got shape {tuple(shape)}")
    if shape[0] == 0:
        raise InputError(path, "empty bag: 'features' has 0 patches")
    if shape[1] == 0:
        raise InputError(path, "'features' has 0 dimensions (shape (N, 0))")


def _check_coords_shape(path: Path, coords_shape: tuple[int, ...], n: int) -> None:
    if len(coords_shape) != 2 or coords_shape[1] != 2:
        raise InputError(path, f"'coords' must be (N, 2), got shape {tuple(coords_shape)}")
    if coords_shape[0] != n:
        raise InputError(path, f"'coords' has {coords_shape[0]} rows but 'features' has {n}")


def check_finite(path: str | Path, name: str, values: np.ndarray) -> None:
    """Raise naming the first bad row: NaN/Inf features poison every mean, norm and k-means after."""
    if values.dtype.kind not in "fc":
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    bad_rows = np.flatnonzero(~finite.reshape(len(values), -1).all(axis=1))
    raise InputError(
        path,
        f"'{name}' has non-finite values (NaN/Inf) in {len(bad_rows)} of {len(values)} rows "
        f"(first bad row {int(bad_rows[0])})",
    )


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "fiu":
        raise InputError(path, f"'features' has non-numeric dtype {dtype}")


def bag_info(path: str | Path) -> BagInfo:
    """Shape and dtype of a bag without reading its features (for cohort scans and D checks)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix == ".pt":
        bag = read_bag(path)
        return BagInfo(str(path), bag.n_patches, bag.dim, str(bag.features.dtype), bag.coords is not None)
    header = read_h5_header(path, ("features", "coords"))
    feats = header.require("features")
    _check_features_shape(path, feats.shape)
    _check_dtype(path, feats.dtype)
    has_coords = "coords" in header.datasets
    if has_coords:
        _check_coords_shape(path, header.datasets["coords"].shape, feats.shape[0])
    return BagInfo(str(path), int(feats.shape[0]), int(feats.shape[1]), str(feats.dtype), has_coords)


def _read_whole(f: h5py.File, name: str, dsid: h5py.h5d.DatasetID, shape: tuple[int, ...]) -> np.ndarray:
    """All of a dataset (of `shape`, already asked for: each `dsid.shape` is an HDF5 call of ~30 us,
    a tenth of a small bag's read) into a fresh array; anything but plain numbers goes through h5py."""
    dtype = dsid.dtype
    if dtype.kind not in "biuf" or dtype.names is not None:
        return f[name][()]
    out = np.empty(shape, dtype)
    dsid.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def read_bag(path: str | Path, *, check_values: bool = True, metadata: bool = True) -> Bag:
    """Read and validate a whole bag (.h5 or .pt). Features keep their stored dtype.

    `metadata=False` skips attrs and extra datasets: the training loaders need only the arrays, and
    reading a dozen attrs costs more than the features of a small bag.
    """
    path = Path(path)
    _check_exists(path)
    if path.suffix == ".pt":
        return _read_pt(path, check_values=check_values)
    with reading_h5(path) as f:
        fds = open_dataset(f, "features")
        if fds is None:
            raise missing_dataset(path, "features", f.keys())
        shape = fds.shape
        _check_features_shape(path, shape)
        _check_dtype(path, fds.dtype)
        n = int(shape[0])
        coords = coords_attrs = None
        cds = open_dataset(f, "coords")
        if cds is not None:
            coords_shape = cds.shape
            _check_coords_shape(path, coords_shape, n)
            coords = _read_whole(f, "coords", cds, coords_shape)
            coords_attrs = plain_attrs(f["coords"].attrs) if metadata else None
        features = _read_whole(f, "features", fds, shape)
        extras, attrs = {}, {}
        if metadata:
            for k in f:
                if k in ("features", "coords"):
                    continue
                obj = f[k]
                if isinstance(obj, h5py.Dataset) and obj.shape[:1] == (n,):
                    extras[k] = obj[()]
            attrs = plain_attrs(f.attrs)
    if check_values:
        check_finite(path, "features", features)
        if coords is not None:
            check_finite(path, "coords", coords)
    return Bag(features, coords, attrs, coords_attrs or {}, extras, str(path))


def _read_pt(path: Path, *, check_values: bool) -> Bag:
    import torch

    from wsisum.checkpoints import safe_torch_load  # torch is slow to import: only for .pt bags

    try:
        obj = safe_torch_load(path)
    except Exception as err:  # torch raises many types for corrupt zips/pickles
        raise InputError(path, f"unreadable .pt file (truncated or corrupt?): {short_error(err)}") from None
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise InputError(path, f"no 'features' entry (found: {sorted(map(str, obj))})")
        coords = obj.get("coords")
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise InputError(path, f"expected a tensor of features, got {type(obj).__name__}")
    features = obj.detach().cpu().numpy()
    _check_features_shape(path, features.shape)
    _check_dtype(path, features.dtype)
    if coords is not None:
        coords = np.asarray(coords.cpu().numpy() if isinstance(coords, torch.Tensor) else coords)
        _check_coords_shape(path, coords.shape, features.shape[0])
    if check_values:
        check_finite(path, "features", features)
    return Bag(features, coords, {}, {}, {}, str(path))


def write_bag(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray | None = None,
    *,
    attrs: dict[str, Any] | None = None,
    coords_attrs: dict[str, Any] | None = None,
    extras: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a bag atomically (temp file + rename). `.pt` stores features only, as CLAM does."""
    path = Path(path)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise InputError(path, f"refusing to write a bag with features of shape {features.shape}")
    if coords is not None:
        coords = np.asarray(coords)
        _check_coords_shape(path, coords.shape, features.shape[0])
    with atomic_path(path) as tmp:
        if path.suffix == ".pt":
            import torch

            torch.save(torch.from_numpy(np.ascontiguousarray(features)), tmp)
        else:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=features)
                if coords is not None:
                    cds = f.create_dataset("coords", data=coords)
                    for k, v in (coords_attrs or {}).items():
                        cds.attrs[k] = v
                for k, v in (extras or {}).items():
                    f.create_dataset(k, data=np.asarray(v))
                for k, v in (attrs or {}).items():
                    f.attrs[k] = "" if v is None else v
    return path


def _pixels(value: Any) -> float | None:
    """One positive finite number from an attr (scalar or 1-element array), else None."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return float(arr[0]) if arr.size == 1 and np.isfinite(arr[0]) and arr[0] > 0 else None


def _whole(v: float) -> int | float:
    return int(round(v)) if abs(v - round(v)) < 1e-6 else v


def patch_size_from_attrs(attrs: dict[str, Any]) -> tuple[int | float, int | float] | None:
    """(width, height) of a patch in level-0 pixels from coords attrs, or None when they do not say.

    TRIDENT (and our synthetic cohorts) write `patch_size_level0`; CLAM writes `patch_size` at
    `patch_level` with that level's `downsample` (x, y). A level > 0 without a downsample is unknown.
    """
    level0 = _pixels(attrs.get("patch_size_level0"))
    if level0 is not None:
        return _whole(level0), _whole(level0)
    size = _pixels(attrs.get("patch_size"))
    if size is None:
        return None
    if "downsample" in attrs:
        down = np.asarray(attrs["downsample"], dtype=np.float64).reshape(-1)
        if down.size not in (1, 2) or not (np.isfinite(down) & (down > 0)).all():
            return None
        dx, dy = (down[0], down[0]) if down.size == 1 else (down[0], down[1])
        return _whole(size * dx), _whole(size * dy)
    if _pixels(attrs.get("patch_level")) is not None:  # a level > 0 whose downsample is not given
        return None
    return _whole(size), _whole(size)
