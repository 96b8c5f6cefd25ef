"""LightningDataModules that stream `.h5` bags: downstream classification and summarizer pretraining.

Both validate the whole cohort in `setup` from file headers only (missing or corrupt files, mixed
feature dims, split leakage, unlabelled or bag-less slides), so a bad file fails in seconds with one
line instead of hours into training.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsisum.data.bad_slides import OnBadSlide
from wsisum.data.bags import bag_info
from wsisum.data.cohort import Cohort
from wsisum.data.datasets import BagDataset, Item, TeacherBagDataset, collate_bags
from wsisum.data.embeddings import read_embedding
from wsisum.data.labels import Labels, read_labels
from wsisum.data.splits import PARTS, Split, read_split
from wsisum.data.thread_loader import ThreadDataLoader
from wsisum.errors import InputError, examples

log = logging.getLogger(__name__)
OnBad = OnBadSlide


def scan_bags(
    cohort: Cohort, slide_ids: Sequence[str], on_bad: OnBad = "error"
) -> tuple[list[str], int, dict[str, str]]:
    """Check every bag's header; return (usable slide ids, feature dim, {skipped slide id: problem}).

    The cohort's feature dim is the one most bags have, so a stray bag from another encoder is the
    one reported, whichever comes first. With `on_bad="error"` the first problem is raised.
    """
    infos, bad = {}, {}
    for sid in slide_ids:
        try:
            infos[sid] = bag_info(cohort[sid].bag_path)
        except InputError as err:
            if on_bad == "error":
                raise
            bad[sid] = str(err)
    dims = Counter(info.dim for info in infos.values())
    if not dims:
        raise InputError(cohort.bag_dir, f"no usable bag among {len(slide_ids)} slide(s)")
    dim, n_dim = dims.most_common(1)[0]
    good = []
    for sid, info in infos.items():
        if info.dim == dim:
            good.append(sid)
            continue
        err = InputError(
            info.path,
            f"feature dim {info.dim} differs from the cohort's {dim} ({n_dim} of {len(infos)} bags); "
            "one cohort must use one encoder",
        )
        if on_bad == "error":
            raise err
        bad[sid] = str(err)
    if bad:
        log.warning("%d slide(s) skipped as bad input: %s", len(bad), examples(list(bad)))
    return good, dim, bad


def scan_teachers(
    cohort: Cohort, slide_ids: Sequence[str], teachers: Sequence[str], on_bad: OnBad = "error"
) -> tuple[dict[str, list[Path | None]], dict[str, int], dict[str, str], dict[Path, np.ndarray]]:
    """Find and read every slide's teacher embeddings; return ({teacher: path or None per slide},
    {teacher: dim}, {"<slide> (<teacher>)": problem}, {path: embedding} of the usable files).

    A missing file is expected (masked in the loss). An unreadable one or one whose dim differs from
    the teacher's usual dim is bad input: reported and masked like a missing one (or raised). The
    embeddings read here are returned, so fitting the teacher fusion need not read them again.
    """
    paths: dict[str, list[Path | None]] = {}
    dims: dict[str, int] = {}
    bad: dict[str, str] = {}
    loaded: dict[Path, np.ndarray] = {}
    for t in teachers:
        found: list[tuple[str, Path, np.ndarray | None]] = []
        for sid in slide_ids:
            p = cohort.embedding_path(sid, t)
            emb = None
            if p.is_file() or p.is_symlink():
                try:
                    emb = read_embedding(p)
                except InputError as err:
                    if on_bad == "error":
                        raise
                    bad[f"{sid} ({t})"] = str(err)
            found.append((sid, p, emb))
        present = Counter(int(emb.shape[0]) for _, _, emb in found if emb is not None)
        if not present:
            raise InputError(cohort.teacher_dir(cohort.datasets[0], t), f"no readable embedding for teacher {t}")
        dims[t] = dim = present.most_common(1)[0][0]
        paths[t] = []
        for sid, p, emb in found:
            if emb is not None and emb.shape[0] != dim:
                err = InputError(p, f"teacher {t} embedding has dim {emb.shape[0]}, the other slides' have {dim}")
                if on_bad == "error":
                    raise err
                bad[f"{sid} ({t})"] = str(err)
                emb = None
            paths[t].append(None if emb is None else p)
            if emb is not None:
                loaded[p] = emb
        n_missing = sum(p is None for p in paths[t])
        if n_missing:
            log.warning(
                "teacher %s: %d of %d slides lack a usable embedding (masked in the loss)", t, n_missing, len(slide_ids)
            )
    return paths, dims, bad, loaded


AUTO_WORKERS_MIN_BYTES = 8 * 2**20  # median bag file size from which `num_workers=auto` starts workers


def resolve_num_workers(num_workers: int | str, paths: Sequence[str | Path]) -> int:
    """`auto`: no workers for small bags, up to 2 for large ones (measured by scripts/bench_io.py).

    For bags of a few hundred kB (summaries, the demo cohort) handing a bag to a worker and back
    costs more than reading it in the loop (0.87-0.89 of a plain h5py loop without workers, 0.6 with
    2 reader threads, 0.2 with 2 processes), while large bags (10k-100k patches, tens of MB) are read
    by 1-2 reader threads at the plain loop's speed, overlapped with the training step.
    """
    if num_workers != "auto":
        return int(num_workers)
    sizes = sorted(Path(p).stat().st_size for p in paths if Path(p).exists())
    if not sizes or sizes[len(sizes) // 2] < AUTO_WORKERS_MIN_BYTES:
        return 0
    return max(1, min(2, (os.cpu_count() or 1) - 1))


WORKER_KINDS = ("thread", "process")


def _loader(
    ds: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    persistent: bool = True,
    worker_kind: str = "process",
) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    common = dict(batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=gen)
    if worker_kind == "thread":
        return ThreadDataLoader(ds, threads=num_workers, pin_memory=torch.cuda.is_available(), **common)
    return DataLoader(
        ds,
        num_workers=num_workers,
        persistent_workers=persistent and num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        **common,
    )


class ClassificationDataModule(L.LightningDataModule):
    """Bags + labels of one task, one fold of its CLAM splits; bags are full (`"full"`) or summaries.

    `bags` is either "full" (the cohort's `h5_files/`) or a directory of summary bags in the same
    `<dataset>/<slide_id>.h5` layout (what `wsisum-summarize` writes).
    """

    def __init__(
        self,
        root: str | Path,
        task: str,
        classes: Sequence[str] | None = None,
        fold: int = 0,
        bags: str | Path = "full",
        datasets: Sequence[str] | None = None,
        labels_path: str | Path | None = None,
        splits_dir: str | Path | None = None,
        batch_size: int = 1,
        num_workers: int | str = 0,
        worker_kind: str = "thread",
        seed: int = 0,
        check_values: bool = True,
        allow_leakage: bool = False,
        on_bad_slide: OnBad = "error",
        layout: str = "auto",
        encoder: str | None = None,
    ):
        super().__init__()
        self.root, self.task, self.classes, self.fold = Path(root), task, classes, int(fold)
        self.bags = bags
        self.datasets = list(datasets) if datasets else None
        self.labels_path, self.splits_dir = labels_path, splits_dir
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.check_values, self.allow_leakage, self.on_bad_slide = check_values, allow_leakage, on_bad_slide
        self.layout, self.encoder = layout, encoder
        if worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}, not {worker_kind!r}")
        self.worker_kind = worker_kind
        self.cohort: Cohort | None = None
        self.labels: Labels | None = None
        self.split: Split | None = None
        self.feature_dim: int | None = None
        self.parts: dict[str, BagDataset] = {}
        self.skipped: dict[str, str] = {}  # slide id -> problem, for slides left out as bad input

    @property
    def num_classes(self) -> int:
        assert self.labels is not None, "call setup() first"
        return len(self.labels.classes)

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        bag_dir = None if str(self.bags) == "full" else self.bags
        self.cohort = cohort = Cohort(
            self.root, self.datasets, bag_dir=bag_dir, layout=self.layout, encoder=self.encoder
        )
        self.labels = labels = read_labels(self.labels_path or cohort.labels_path(self.task), self.classes)
        splits_dir = Path(self.splits_dir) if self.splits_dir else cohort.splits_dir(self.task)
        self.split = split = read_split(
            splits_dir / f"splits_{self.fold}.csv", case_of=labels.case_of, allow_leakage=self.allow_leakage
        )
        ids = [s for p in PARTS for s in split.part(p)]
        self.skipped = {}
        unlabelled = [s for s in ids if s not in labels.label_of]
        if unlabelled and self.on_bad_slide == "error":
            raise InputError(
                split.path, f"{len(unlabelled)} slide id(s) have no label in {labels.path} ({examples(unlabelled)})"
            )
        for s in unlabelled:
            self.skipped[s] = f"{split.path}: slide '{s}' has no label in {labels.path}"
        no_bag = [s for s in ids if s not in cohort and s in labels.label_of]
        if no_bag and self.on_bad_slide == "error":
            raise InputError(cohort.bag_dir, f"no bag for {len(no_bag)} slide(s) of {split.path} ({examples(no_bag)})")
        for s in no_bag:
            self.skipped[s] = f"{cohort.bag_dir}: no bag for slide '{s}' of {split.path}"
        unused = sorted(set(labels.label_of) - set(cohort.slides) - set(ids))
        if unused:  # usual when one labels file serves several cohorts: not an error
            log.info("%s: %d labelled slide(s) have no bag and are in no split", labels.path, len(unused))
        ids = [s for s in ids if s not in self.skipped]
        usable, self.feature_dim, bad = scan_bags(cohort, ids, self.on_bad_slide)
        self.skipped |= bad
        usable_set = set(usable)
        for part in PARTS:
            sids = [s for s in split.part(part) if s in usable_set]
            if not sids and part != "val":
                raise InputError(split.path, f"the {part} partition is empty")
            self.parts[part] = BagDataset(
                [cohort[s].bag_path for s in sids],
                sids,
                [labels.label_of[s] for s in sids],
                check_values=self.check_values,
            )
        self.num_workers = resolve_num_workers(self.num_workers, [p for d in self.parts.values() for p in d.paths])

    def train_dataloader(self) -> DataLoader:
        return _loader(
            self.parts["train"],
            self.batch_size,
            self.num_workers,
            True,
            self.seed + self.fold,
            worker_kind=self.worker_kind,
        )

    def val_dataloader(self) -> DataLoader:
        return _loader(self.parts["val"], self.batch_size, self.num_workers, False, 0, worker_kind=self.worker_kind)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.parts["test"], self.batch_size, self.num_workers, False, 0, worker_kind=self.worker_kind)


def _in_val(slide_id: str, seed: int, fraction: float) -> bool:
    """Stable, seed-dependent membership: same slide, same side, whatever the cohort's order."""
    h = hashlib.sha1(f"{seed}:{slide_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


class PretrainDataModule(L.LightningDataModule):
    """Bags + teacher slide embeddings for summarizer pretraining (no labels needed).

    A slide that lacks a teacher keeps training on the others (its `teacher_present` is False).
    `transform` lets the pretraining stage draw each epoch's pool from the full bag in the worker.
    `exclude` keeps slides (e.g. every downstream test slide) out of pretraining. `worker_kind` is
    checked but not used, so that one `data` config serves both datamodules: pretraining always reads
    through worker processes (its pools are a few hundred patches, cheap to hand over).
    """

    def __init__(
        self,
        root: str | Path,
        teachers: Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        exclude: Sequence[str] = (),
        batch_size: int = 1,
        num_workers: int | str = 0,
        seed: int = 0,
        check_values: bool = True,
        on_bad_slide: OnBad = "skip",
        transform: Callable[[Item], Item] | None = None,
        layout: str = "auto",
        encoder: str | None = None,
        worker_kind: str = "process",
    ):
        super().__init__()
        if worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}, not {worker_kind!r}")
        self.root, self.teacher_names = Path(root), list(teachers) if teachers else None
        self.datasets = list(datasets) if datasets else None
        self.val_fraction, self.exclude = float(val_fraction), set(exclude)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.check_values, self.on_bad_slide, self.transform = check_values, on_bad_slide, transform
        self.layout, self.encoder = layout, encoder
        self.teacher_dims: dict[str, int] = {}
        self.feature_dim: int | None = None
        self.parts: dict[str, TeacherBagDataset] = {}
        self.skipped: dict[str, str] = {}  # slide id (or "slide (teacher)") -> problem, left out as bad input
        self.embeddings: dict[Path, np.ndarray] = {}  # every usable teacher embedding, read once at setup

    def setup(self, stage: str | None = None) -> None:
        if self.parts:
            return
        cohort = Cohort(self.root, self.datasets, layout=self.layout, encoder=self.encoder)
        teachers = self.teacher_names or cohort.teachers()
        if not teachers:
            raise InputError(cohort.root / "slide_embeddings", "no teacher embeddings found")
        ids = [s for s in cohort.slide_ids() if s not in self.exclude]
        ids, self.feature_dim, self.skipped = scan_bags(cohort, ids, self.on_bad_slide)
        paths, self.teacher_dims, bad_teachers, self.embeddings = scan_teachers(
            cohort, ids, teachers, self.on_bad_slide
        )
        self.skipped |= bad_teachers
        in_val = [_in_val(s, self.seed, self.val_fraction) for s in ids]
        for part, want in (("train", False), ("val", True)):
            idx = [i for i, v in enumerate(in_val) if v == want]
            self.parts[part] = TeacherBagDataset(
                [cohort[ids[i]].bag_path for i in idx],
                [ids[i] for i in idx],
                {t: [paths[t][i] for i in idx] for t in teachers},
                self.teacher_dims,
                check_values=self.check_values,
                # validation keeps the epoch-0 pools (a shallow copy: own epoch, shared cluster cache)
                transform=self.transform if part == "train" else copy.copy(self.transform),
            )
        self.num_workers = resolve_num_workers(self.num_workers, [p for d in self.parts.values() for p in d.paths])

    def train_dataloader(self) -> DataLoader:
        # A new loader (and fresh workers) every epoch carries the current epoch to the pool transform,
        # so each epoch draws new pools deterministically (use reload_dataloaders_every_n_epochs=1).
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.transform is not None and hasattr(self.transform, "epoch"):
            self.transform.epoch = epoch
        return _loader(
            self.parts["train"], self.batch_size, self.num_workers, True, self.seed + epoch, persistent=False
        )

    def val_dataloader(self) -> DataLoader:
        return _loader(self.parts["val"], self.batch_size, self.num_workers, False, 0)

    def state(self) -> dict[str, Any]:
        """What a checkpoint should remember about the data (teacher dims, feature dim)."""
        return {"teacher_dims": self.teacher_dims, "feature_dim": self.feature_dim}
