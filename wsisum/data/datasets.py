"""Torch datasets that stream bags from disk, and the padding collate for variable bag sizes.

Files are opened inside `__getitem__`, never in `__init__`: an h5py handle created in the parent
process and inherited by forked DataLoader workers is the classic h5py + workers corruption trap.
Opening per item costs ~0.1 ms, negligible next to reading a bag.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsisum.data.bags import read_bag
from wsisum.data.embeddings import read_embedding
from wsisum.errors import InputError

Item = dict[str, Any]
PER_PATCH_EXTRAS = {"pos": 0.0, "pool_indices": -1}  # key -> padding value


def bag_item(path: str | Path, slide_id: str, *, check_values: bool = True) -> Item:
    """Read one bag as tensors: features (N, D) in their stored float dtype, coords int64 (N, 2)
    (-1 where unknown).

    float16 bags stay float16 here: half the bytes through worker pipes and host-to-GPU copies; the
    models cast to float32 (or autocast) on their device, where the cast is free.
    """
    bag = read_bag(path, check_values=check_values, metadata=False)
    arr = bag.features if bag.features.dtype in (np.float16, np.float32) else bag.features.astype(np.float32)
    feats = torch.from_numpy(np.ascontiguousarray(arr))
    if bag.coords is not None:
        coords = torch.from_numpy(np.ascontiguousarray(bag.coords)).long()
    else:
        coords = torch.full((bag.n_patches, 2), -1, dtype=torch.long)
    return {"slide_id": slide_id, "features": feats, "coords": coords, "path": str(path)}


class BagDataset(Dataset):
    """Bags with optional integer targets; `transform` may rewrite an item (e.g. draw a pool)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        slide_ids: Sequence[str],
        targets: Sequence[int] | None = None,
        *,
        check_values: bool = True,
        transform: Callable[[Item], Item] | None = None,
    ):
        if len(paths) != len(slide_ids) or (targets is not None and len(targets) != len(paths)):
            raise ValueError("paths, slide_ids and targets must have the same length")
        self.paths = [str(p) for p in paths]
        self.slide_ids = list(slide_ids)
        self.targets = None if targets is None else [int(t) for t in targets]
        self.check_values = check_values
        self.transform = transform
        # (path, mtime, size) of bags whose values this process already checked: the NaN/Inf scan costs
        # as much as reading a float16 bag, and an unchanged file need not be scanned every epoch
        self._checked: set[tuple[str, int, int]] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        try:
            item = self._item(i)
            return self.transform(item) if self.transform else item
        except InputError as err:
            # never raised here: inside a DataLoader worker it would surface as a multi-line traceback
            # and end the run; the main process reports or skips it (wsisum.lit.bad_slides)
            message = str(err) if err.path is not None else f"{self.paths[i]}: {err.problem}"
            return {"slide_id": self.slide_ids[i], "path": self.paths[i], "error": message}

    def _item(self, i: int) -> Item:
        """Item i before the transform; subclasses add their fields here."""
        key = None
        if self.check_values:
            try:
                st = os.stat(self.paths[i])
                key = (self.paths[i], st.st_mtime_ns, st.st_size)
            except OSError:
                key = None  # read_bag names the problem
        item = bag_item(self.paths[i], self.slide_ids[i], check_values=key is None or key not in self._checked)
        if key is not None:
            self._checked.add(key)
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


class TeacherBagDataset(BagDataset):
    """Bags plus each slide's teacher embeddings; a missing teacher file is masked, not fatal."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        slide_ids: Sequence[str],
        teacher_paths: Mapping[str, Sequence[Path | None]],
        teacher_dims: Mapping[str, int],
        **kwargs: Any,
    ):
        super().__init__(paths, slide_ids, **kwargs)
        self.teacher_paths = {t: list(ps) for t, ps in teacher_paths.items()}
        self.teacher_dims = dict(teacher_dims)

    def _item(self, i: int) -> Item:
        item = super()._item(i)
        targets, present = {}, {}
        for t, paths in self.teacher_paths.items():
            p = paths[i]
            if p is None:
                targets[t] = torch.zeros(self.teacher_dims[t])
                present[t] = False
                continue
            emb = read_embedding(p)
            if emb.shape[0] != self.teacher_dims[t]:
                raise InputError(p, f"teacher {t} has dim {emb.shape[0]}, other slides have {self.teacher_dims[t]}")
            targets[t] = torch.from_numpy(emb)
            present[t] = True
        item["teachers"] = targets
        item["teacher_present"] = present
        return item


def collate_bags(batch: Sequence[Item]) -> Item:
    """Pad a list of bags to the longest: features (B, N, D), coords (B, N, 2), mask (B, N) True=real.

    Nothing is truncated. A batch of one bag is returned without a padding copy. Items the dataset
    could not read go to `bad` as (slide_id, message); a batch of only bad items has no slides.
    """
    bad = [(b["slide_id"], b["error"]) for b in batch if "error" in b]
    batch = [b for b in batch if "error" not in b]
    if not batch:
        return {"slide_id": [], "path": [], "n_patches": torch.zeros(0, dtype=torch.long), "bad": bad}
    dims = {b["features"].shape[1] for b in batch}
    if len(dims) > 1:
        first = batch[0]
        odd = next(b for b in batch if b["features"].shape[1] != first["features"].shape[1])
        raise InputError(
            odd["path"],
            f"feature dim {odd['features'].shape[1]} differs from {first['path']} "
            f"({first['features'].shape[1]}); one cohort must use one encoder",
        )
    n = torch.tensor([b["features"].shape[0] for b in batch])
    out: Item = {
        "slide_id": [b["slide_id"] for b in batch],
        "n_patches": n,
        "path": [b["path"] for b in batch],
        "bad": bad,
    }
    if len(batch) == 1:
        out["features"] = batch[0]["features"].unsqueeze(0)
        out["coords"] = batch[0]["coords"].unsqueeze(0)
        out["mask"] = torch.ones(1, int(n[0]), dtype=torch.bool)
    else:
        n_max = int(n.max())
        d = batch[0]["features"].shape[1]
        feats = batch[0]["features"].new_zeros(len(batch), n_max, d)
        coords = torch.full((len(batch), n_max, 2), -1, dtype=torch.long)
        for j, b in enumerate(batch):
            feats[j, : n[j]] = b["features"]
            coords[j, : n[j]] = b["coords"]
        out["features"], out["coords"] = feats, coords
        out["mask"] = torch.arange(n_max)[None, :] < n[:, None]
    for key, fill in PER_PATCH_EXTRAS.items():  # per-patch tensors added by transforms
        if key in batch[0]:
            first = batch[0][key]
            padded = torch.full((len(batch), int(n.max()), *first.shape[1:]), fill, dtype=first.dtype)
            for j, b in enumerate(batch):
                padded[j, : n[j]] = b[key]
            out[key] = padded
    if "target" in batch[0]:
        out["target"] = torch.tensor([b["target"] for b in batch], dtype=torch.long)
    if "teachers" in batch[0]:
        names = list(batch[0]["teachers"])
        out["teachers"] = {t: torch.stack([b["teachers"][t] for b in batch]) for t in names}
        out["teacher_present"] = {t: torch.tensor([b["teacher_present"][t] for b in batch]) for t in names}
    return out
