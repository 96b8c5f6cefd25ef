"""The retrieval index of one bag directory: every slide's patch features in ONE h5 file.

A search compares each query slide with every other slide, so it must not reopen thousands of bag
files per query: the bags of a directory (full bags or one summary set) are read once into one
file, reused while the bags are unchanged and rebuilt when any bag's size or modification time
changes. It covers every dataset folder of the directory, so tasks of the same cohort share it.

Layout (h5, no pickle):

    features  (P, D) float32   L2-normalised patch features of every slide, concatenated
    offsets   (S+1,) int64     slide s owns rows offsets[s]:offsets[s+1]
    means     (S, D) float32   each slide's mean feature over ALL its patches, L2-normalised
    n_patches (S,)   int64     patches in the bag (before the cap)
    slide_ids, datasets, samplers, budgets (S,)   strings (the last two from summary attrs, "" if none)
    fingerprint, bad           JSON strings: what the index was built from; {slide_id: problem}

`max_patches` caps the patches kept per slide with a seeded subsample (seed, slide_id), which
bounds both the file and every search on 100k-patch bags; the means always use every patch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.data.bad_slides import OnBadSlide
from wsisum.data.bags import read_bag
from wsisum.data.cohort import Cohort, file_identity
from wsisum.data.datamodules import scan_bags
from wsisum.data.hdf5 import open_h5
from wsisum.data.layouts import BAG_DIR
from wsisum.errors import InputError
from wsisum.seeding import rng_for

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the layout changes: old files are rebuilt
EPS = 1e-12


@dataclass
class RetrievalIndex:
    """An index in memory; `patches(i)` is a view of slide i's rows (no copy)."""

    path: Path
    slide_ids: list[str]
    datasets: list[str]
    offsets: np.ndarray
    features: np.ndarray
    means: np.ndarray
    n_patches: np.ndarray
    samplers: list[str] = field(default_factory=list)
    budgets: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    reused: bool = False

    def __len__(self) -> int:
        return len(self.slide_ids)

    def patches(self, i: int) -> np.ndarray:
        return self.features[self.offsets[i] : self.offsets[i + 1]]

    def position(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.slide_ids)}


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (a zero row stays zero), as float32: inner product = cosine."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, EPS), dtype=np.float32)


def index_path(index_dir: str | Path, bag_dir: str | Path, max_patches: int | None, seed: int) -> Path:
    """One file per (bag directory, cap, seed): readable name plus a hash of the resolved path."""
    bag_dir = Path(bag_dir).expanduser().resolve()
    key = hashlib.sha1(f"{bag_dir}|{max_patches}|{seed}".encode()).hexdigest()[:12]
    name = bag_dir.parent.name if bag_dir.name == BAG_DIR else bag_dir.name
    return Path(index_dir).expanduser() / f"{name}-{key}.h5"


def fingerprint(cohort: Cohort, max_patches: int | None, seed: int) -> dict:
    """What the index depends on: its parameters and every bag's (size, mtime); stat only, no open."""
    bags = []
    for sid, rec in cohort.slides.items():  # a dangling link is recorded as missing, reported as a bad slide
        bags.append([sid, rec.dataset, str(rec.bag_path), *file_identity(rec.bag_path)])
    return {"format": FORMAT, "max_patches": max_patches, "seed": int(seed), "bags": bags}


def subsample(n: int, max_patches: int | None, seed: int, slide_id: str) -> np.ndarray | None:
    """Sorted row indices of a seeded subsample of `max_patches` rows, or None to keep all `n`."""
    if max_patches is None or n <= max_patches:
        return None
    return np.sort(rng_for(seed, slide_id, "retrieval-subsample").choice(n, max_patches, replace=False))


def _text(values: Sequence[str]) -> np.ndarray:
    return np.array([str(v).encode() for v in values], dtype=h5py.string_dtype())


def _strings(ds: h5py.Dataset) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def _attr_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    return "" if value is None else str(value)


def build_index(
    cohort: Cohort,
    path: Path,
    max_patches: int | None = None,
    seed: int = 0,
    on_bad: OnBadSlide = "skip",
    keep: Collection[str] | None = None,
) -> RetrievalIndex:
    """Read every bag once and write the index file atomically; bad bags are left out and listed."""
    fp = fingerprint(cohort, max_patches, seed)
    ids = list(cohort.slides)
    usable, dim, bad = scan_bags(cohort, ids, on_bad)
    meta: dict[str, list] = {k: [] for k in ("slide_ids", "datasets", "n_patches", "samplers", "budgets")}
    offsets, means = [0], []
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        feats = f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype="f4", chunks=(1024, dim))
        for sid in usable:
            rec = cohort[sid]
            try:
                bag = read_bag(rec.bag_path)
            except InputError as err:
                if on_bad == "error":
                    raise
                bad[sid] = str(err)
                continue
            x = bag.features.astype(np.float32)
            sub = subsample(len(x), max_patches, seed, sid)
            rows = l2_normalise(x if sub is None else x[sub])
            feats.resize(offsets[-1] + len(rows), axis=0)
            feats[offsets[-1] :] = rows
            offsets.append(offsets[-1] + len(rows))
            means.append(x.mean(axis=0))
            for key, value in zip(meta, (sid, rec.dataset, len(x), bag.attrs.get("sampler"), bag.attrs.get("budget"))):
                meta[key].append(value if key == "n_patches" else _attr_text(value))
        f["offsets"] = np.asarray(offsets, dtype=np.int64)
        f["means"] = l2_normalise(np.stack(means)) if means else np.zeros((0, dim), np.float32)
        f["n_patches"] = np.asarray(meta["n_patches"], dtype=np.int64)
        for key in ("slide_ids", "datasets", "samplers", "budgets"):
            f[key] = _text(meta[key])
        f["fingerprint"] = json.dumps(fp)
        f["bad"] = json.dumps(dict(sorted(bad.items())))
    log.info("retrieval index: %d slides, %d patches -> %s", len(offsets) - 1, offsets[-1], path)
    return read_index(path, keep)


def read_index(path: Path, keep: Collection[str] | None = None) -> RetrievalIndex:
    """Load an index file; with `keep`, only those slides' rows are read (memory ~ the task, not the file)."""
    try:
        with open_h5(path) as f:
            ids, offsets = _strings(f["slide_ids"]), f["offsets"][()]
            rows = [i for i, s in enumerate(ids) if keep is None or s in keep]
            sizes = [int(offsets[i + 1] - offsets[i]) for i in rows]
            feats = f["features"]
            if keep is None:
                features = feats[()]
            else:
                features = np.empty((sum(sizes), feats.shape[1]), dtype=np.float32)
                start = 0
                for i, n in zip(rows, sizes):
                    features[start : start + n] = feats[offsets[i] : offsets[i + 1]]
                    start += n

            def pick(name: str) -> list[str]:
                values = _strings(f[name])
                return [values[i] for i in rows]

            return RetrievalIndex(
                path=Path(path),
                slide_ids=[ids[i] for i in rows],
                datasets=pick("datasets"),
                offsets=np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64),
                features=features,
                means=f["means"][()][rows],
                n_patches=f["n_patches"][()][rows],
                samplers=pick("samplers"),
                budgets=pick("budgets"),
                bad=json.loads(_attr_text(f["bad"][()])),
            )
    except InputError:  # e.g. being written by another process: already one line naming the file
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"unreadable retrieval index (delete it to rebuild): {err}") from None


def stored_fingerprint(path: Path) -> dict | None:
    """The fingerprint an index file was built with; None when absent or unreadable (then rebuilt)."""
    try:
        with open_h5(path) as f:
            return json.loads(_attr_text(f["fingerprint"][()]))
    except (OSError, KeyError, ValueError):
        return None


def load_or_build(
    cohort: Cohort,
    path: Path,
    max_patches: int | None = None,
    seed: int = 0,
    on_bad: OnBadSlide = "skip",
    keep: Collection[str] | None = None,
) -> RetrievalIndex:
    """The index of `cohort`'s bags: the file at `path` when its fingerprint matches, else rebuilt.

    The file always covers every bag; `keep` limits what is loaded (e.g. one task's labelled slides).
    """
    path = Path(path)
    if path.is_file() and stored_fingerprint(path) == fingerprint(cohort, max_patches, seed):
        index = read_index(path, keep)
        if on_bad == "error" and index.bad:
            raise InputError(None, next(iter(index.bad.values())))
        index.reused = True
        log.info("retrieval index reused: %s", path)
        return index
    return build_index(cohort, path, max_patches, seed, on_bad, keep)
