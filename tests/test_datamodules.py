"""DataModules stream every bag whole, padded with a mask, and refuse bad cohorts at setup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsisum.data.bags import write_bag
from wsisum.data.datamodules import ClassificationDataModule, PretrainDataModule
from wsisum.data.datasets import collate_bags
from wsisum.data.embeddings import write_embedding
from wsisum.data.splits import write_split
from wsisum.errors import InputError


def _all(loader) -> list[dict]:
    return list(loader)


def test_classification_batches_pad_without_truncating(small_cohort) -> None:
    root, feats = small_cohort
    dm = ClassificationDataModule(root, "task", batch_size=3)
    dm.setup()
    assert dm.num_classes == 2 and dm.feature_dim == 8
    seen = {}
    for part in ("train", "val", "test"):
        loader = getattr(dm, f"{part}_dataloader")()
        for batch in loader:
            b, n_max, d = batch["features"].shape
            assert d == 8 and batch["mask"].shape == (b, n_max) and batch["coords"].shape == (b, n_max, 2)
            assert n_max == int(batch["n_patches"].max())
            for j, sid in enumerate(batch["slide_id"]):
                n = int(batch["n_patches"][j])
                assert batch["mask"][j].sum() == n and not batch["mask"][j, n:].any()
                np.testing.assert_array_equal(batch["features"][j, :n].numpy(), feats[sid])
                assert (batch["features"][j, n:] == 0).all() and (batch["coords"][j, n:] == -1).all()
                seen[sid] = part
    split = dm.split
    assert set(seen) == set(split.train + split.val + split.test)
    assert all(seen[s] == "test" for s in split.test)


def test_train_order_is_seeded(small_cohort) -> None:
    root, _ = small_cohort

    def order(seed: int) -> list[str]:
        dm = ClassificationDataModule(root, "task", seed=seed)
        dm.setup()
        return [b["slide_id"][0] for b in dm.train_dataloader()]

    assert order(0) == order(0)
    assert order(0) != order(1) or len(order(0)) < 3


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_workers_read_lazily(small_cohort, kind: str) -> None:
    root, feats = small_cohort
    dm = ClassificationDataModule(root, "task", num_workers=2, batch_size=2, worker_kind=kind)
    dm.setup()
    got = {sid: int(n) for b in dm.train_dataloader() for sid, n in zip(b["slide_id"], b["n_patches"])}
    assert got == {s: len(feats[s]) for s in dm.split.train}


def test_summary_bag_directory(tmp_path: Path, small_cohort) -> None:
    root, feats = small_cohort
    summaries = tmp_path / "summaries"
    for sid, f in feats.items():
        write_bag(summaries / sid[:3] / f"{sid}.h5", f[:2], extras={"indices": np.arange(2)})
    dm = ClassificationDataModule(root, "task", bags=summaries)
    dm.setup()
    assert {int(b["n_patches"][0]) for b in dm.test_dataloader()} == {2}
    (summaries / dm.split.test[0][:3] / f"{dm.split.test[0]}.h5").unlink()
    dm = ClassificationDataModule(root, "task", bags=summaries)
    with pytest.raises(InputError, match=r"no bag for 1 slide\(s\) of .*splits_0.csv"):
        dm.setup()


def test_setup_errors_are_one_line(small_cohort) -> None:
    root, _ = small_cohort
    write_split(root / "splits" / "task" / "splits_1.csv", ["dsA-000", "dsA-001"], [], ["dsA-001"])
    with pytest.raises(InputError, match=r"splits_1.csv: leaky split: 1 slide id\(s\) in both train and test"):
        ClassificationDataModule(root, "task", fold=1).setup()
    write_split(root / "splits" / "task" / "splits_2.csv", ["dsA-000", "ghost"], [], ["dsA-001"])
    with pytest.raises(InputError, match=r"1 slide id\(s\) have no label .* \(ghost\)"):
        ClassificationDataModule(root, "task", fold=2).setup()
    with pytest.raises(InputError, match="split file not found"):
        ClassificationDataModule(root, "task", fold=7).setup()
    with pytest.raises(InputError, match="labels file not found"):
        ClassificationDataModule(root, "nolabels").setup()


def test_mixed_dims_and_bad_files(small_cohort) -> None:
    root, _ = small_cohort
    dm = ClassificationDataModule(root, "task")
    dm.setup()
    victim, other = dm.split.test[0], dm.split.train[0]
    ds = "dsA" if victim.startswith("dsA") else "dsB"
    write_bag(root / "h5_files" / ds / f"{victim}.h5", np.ones((4, 5), np.float32))
    with pytest.raises(InputError, match=rf"{victim}.h5: feature dim 5 differs from the cohort's 8 \(11 of 12"):
        ClassificationDataModule(root, "task").setup()
    skipping = ClassificationDataModule(root, "task", on_bad_slide="skip")
    skipping.setup()
    assert list(skipping.skipped) == [victim] and "feature dim 5" in skipping.skipped[victim]
    (root / "h5_files" / ds / f"{victim}.h5").write_bytes(b"broken")
    with pytest.raises(InputError, match=f"{victim}.h5: unreadable HDF5"):
        ClassificationDataModule(root, "task").setup()
    skipping = ClassificationDataModule(root, "task", on_bad_slide="skip")
    skipping.setup()
    assert "unreadable HDF5" in skipping.skipped[victim]
    assert victim not in skipping.parts["test"].slide_ids and other in skipping.parts["train"].slide_ids


def test_collate_refuses_mixed_dims() -> None:
    a = {"slide_id": "a", "path": "a.h5", "features": torch.ones(3, 4), "coords": torch.zeros(3, 2)}
    b = {"slide_id": "b", "path": "b.h5", "features": torch.ones(2, 6), "coords": torch.zeros(2, 2)}
    with pytest.raises(InputError, match=r"b.h5: feature dim 6 differs from a.h5 \(4\)"):
        collate_bags([a, b])


def test_pretrain_teachers_masked_when_missing(small_cohort) -> None:
    root, feats = small_cohort
    (root / "slide_embeddings" / "dsA" / "PRISM" / "dsA-002.h5").unlink()
    dm = PretrainDataModule(root, val_fraction=0.25, batch_size=4)
    dm.setup()
    assert dm.teacher_dims == {"PRISM": 20, "TITAN": 12} and dm.feature_dim == 8
    ids = dm.parts["train"].slide_ids + dm.parts["val"].slide_ids
    assert sorted(ids) == sorted(feats) and dm.parts["val"].slide_ids
    present = {}
    for batch in list(dm.train_dataloader()) + list(dm.val_dataloader()):
        assert batch["teachers"]["PRISM"].shape[1:] == (20,)
        for j, sid in enumerate(batch["slide_id"]):
            present[sid] = bool(batch["teacher_present"]["PRISM"][j])
            if not present[sid]:
                assert (batch["teachers"]["PRISM"][j] == 0).all()
    assert [s for s, p in present.items() if not p] == ["dsA-002"]
    again = PretrainDataModule(root, val_fraction=0.25)
    again.setup()
    assert again.parts["val"].slide_ids == dm.parts["val"].slide_ids  # stable split


def test_pretrain_inconsistent_teacher_dim(small_cohort) -> None:
    root, _ = small_cohort
    bad = root / "slide_embeddings" / "dsB" / "TITAN" / "dsB-003.h5"
    write_embedding(bad, np.ones(13))
    with pytest.raises(InputError, match=r"dsB-003.h5: teacher TITAN embedding has dim 13, the other slides' have 12"):
        PretrainDataModule(root, val_fraction=0.0, on_bad_slide="error").setup()
    dm = PretrainDataModule(root, val_fraction=0.0, batch_size=1)  # skip: reported, masked like a missing one
    dm.setup()
    assert list(dm.skipped) == ["dsB-003 (TITAN)"] and dm.teacher_dims["TITAN"] == 12
    ds = dm.parts["train"]
    i = ds.slide_ids.index("dsB-003")
    assert ds.teacher_paths["TITAN"][i] is None and ds.teacher_paths["PRISM"][i] is not None
    item = ds[i]
    assert not item["teacher_present"]["TITAN"] and item["teacher_present"]["PRISM"]


def test_unreadable_bag_at_read_time_is_a_marker_not_an_exception(small_cohort) -> None:
    """A bag whose header is fine but whose values are not (NaN) is found only when read: the dataset
    hands the collate a marker so the main process decides (skip or stop), never a worker traceback."""
    root, _ = small_cohort
    path = root / "h5_files" / "dsA" / "dsA-001.h5"
    feats = np.ones((4, 8), np.float32)
    feats[2, 3] = np.nan
    write_bag(path, feats)
    dm = PretrainDataModule(root, val_fraction=0.0, batch_size=3, num_workers=1)
    dm.setup()
    batches = _all(dm.train_dataloader())
    bad = [b for batch in batches for b in batch["bad"]]
    assert [sid for sid, _ in bad] == ["dsA-001"] and "dsA-001.h5" in bad[0][1] and "row 2" in bad[0][1]
    seen = [s for batch in batches for s in batch["slide_id"]]
    assert "dsA-001" not in seen and len(seen) == len(dm.parts["train"]) - 1


def test_pretrain_transform_and_exclude(small_cohort) -> None:
    root, _ = small_cohort

    def first_two(item):
        item["features"], item["coords"] = item["features"][:2], item["coords"][:2]
        return item

    dm = PretrainDataModule(root, val_fraction=0.0, exclude=["dsB-000"], transform=first_two, batch_size=12)
    dm.setup()
    (batch,) = _all(dm.train_dataloader())
    assert batch["features"].shape[:2] == (11, 2) and "dsB-000" not in batch["slide_id"]
    assert set(batch["teachers"]) == {"PRISM", "TITAN"}


def test_auto_workers_read_small_bags_in_process_and_large_ones_in_workers(tmp_path, small_cohort) -> None:
    from wsisum.data.datamodules import AUTO_WORKERS_MIN_BYTES, resolve_num_workers

    root, _ = small_cohort
    small = sorted(str(p) for p in (root / "h5_files").rglob("*.h5"))
    assert resolve_num_workers("auto", small) == 0 and resolve_num_workers(3, small) == 3
    large = []
    for i in range(3):
        p = tmp_path / f"large{i}.h5"
        with open(p, "wb") as f:
            f.truncate(AUTO_WORKERS_MIN_BYTES + 1)  # sparse: only its size matters
        large.append(str(p))
    assert resolve_num_workers("auto", large) >= 1
    dm = ClassificationDataModule(root, "task", num_workers="auto")
    dm.setup()
    loader = dm.train_dataloader()
    assert dm.num_workers == 0 and loader.num_workers == 0 and loader.threads == 0  # read in the caller's thread


def _batches(dm: ClassificationDataModule) -> list[tuple[str, list[str], torch.Tensor, torch.Tensor]]:
    return [
        (part, b["slide_id"], b["features"], b["mask"])
        for part in ("train", "val", "test")
        for b in getattr(dm, f"{part}_dataloader")()
    ]


def test_reader_threads_yield_what_one_process_reads_in_the_same_order(small_cohort) -> None:
    root, _ = small_cohort
    loaded = {}
    for kind, workers in (("process", 0), ("thread", 0), ("thread", 3), ("process", 2)):
        dm = ClassificationDataModule(root, "task", num_workers=workers, batch_size=2, seed=5, worker_kind=kind)
        dm.setup()
        loaded[kind, workers] = _batches(dm)
    reference = loaded["process", 0]  # torch's own single-process DataLoader
    assert len(reference) > 3
    for key, got in loaded.items():
        assert [(p, ids) for p, ids, _, _ in got] == [(p, ids) for p, ids, _, _ in reference], key
        for (_, _, x, m), (_, _, y, n) in zip(got, reference):
            assert torch.equal(x, y) and torch.equal(m, n)


def test_a_threaded_loader_left_early_stops_its_readers_and_can_start_again(small_cohort) -> None:
    import threading

    root, _ = small_cohort
    dm = ClassificationDataModule(root, "task", num_workers=2, batch_size=1)
    dm.setup()
    loader = dm.train_dataloader()
    first = next(iter(loader))
    assert len(first["slide_id"]) == 1
    for _ in loader:  # a fresh pass after one left early
        break
    import gc

    gc.collect()
    assert not [t for t in threading.enumerate() if t.name.startswith("wsisum-reader")]
    assert len(list(loader)) == len(dm.split.train)


def test_lightning_keeps_the_reader_threads_when_it_shards_the_loader_for_ddp(small_cohort) -> None:
    """Under DDP Lightning re-creates a loader with a DistributedSampler from its recorded arguments."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader, DistributedSampler

    from wsisum.data.thread_loader import ThreadDataLoader

    root, _ = small_cohort
    dm = ClassificationDataModule(root, "task", num_workers=2)
    dm.setup()
    with _replace_dunder_methods(DataLoader, "dataset"):
        loader = dm.test_dataloader()
    assert isinstance(loader, ThreadDataLoader)
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        sharded = _update_dataloader(loader, sampler)
        assert isinstance(sharded, ThreadDataLoader) and sharded.threads == 2
        shards.append([sid for b in sharded for sid in b["slide_id"]])
    assert sorted(shards[0] + shards[1]) == sorted(dm.split.test + dm.split.test[: len(dm.split.test) % 2])


def test_an_unknown_worker_kind_is_one_line(small_cohort) -> None:
    root, _ = small_cohort
    with pytest.raises(ValueError, match="worker_kind must be one of thread, process"):
        ClassificationDataModule(root, "task", worker_kind="fiber")
    with pytest.raises(ValueError, match="worker_kind must be one of thread, process"):
        PretrainDataModule(root, worker_kind="fiber")
    assert PretrainDataModule(root, worker_kind="thread").transform is None  # one data config serves both
