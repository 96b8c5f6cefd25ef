"""Slide-level embeddings (one file per slide per teacher): `features` (1, D_t) or (D_t,)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from wsisum.data.bags import check_finite
from wsisum.data.hdf5 import missing_dataset, reading_h5
from wsisum.errors import InputError


def read_embedding(path: str | Path) -> np.ndarray:
    """Read one slide embedding as float32 (D_t,), validated; D_t comes from the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    with reading_h5(path) as f:
        if "features" not in f:
            raise missing_dataset(path, "features", f.keys())
        emb = f["features"][()]
    emb = np.asarray(emb)
    if emb.ndim == 2 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 1 or emb.shape[0] == 0:
        raise InputError(path, f"slide embedding must have shape (1, D) or (D,), got {tuple(np.shape(emb))}")
    check_finite(path, "features", emb[None])
    return emb.astype(np.float32, copy=False)


def write_embedding(path: str | Path, embedding: np.ndarray, attrs: dict | None = None) -> Path:
    """Write one slide embedding as (1, D_t) float32, atomically."""
    from wsisum.data.atomic import atomic_path

    path = Path(path)
    emb = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=emb)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path
