"""The bad-slide record: each process appends, the app merges; the callback skips or stops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wsisum.data.bad_slides import LEDGER_FILE, BadSlideLedger, read_ledger, report_bad_slides
from wsisum.data.datasets import collate_bags
from wsisum.errors import InputError
from wsisum.lit.bad_slides import BadSlideCallback, is_empty


def test_ledgers_of_several_processes_merge_once_per_slide(tmp_path: Path, capsys) -> None:
    a, b = BadSlideLedger(tmp_path, "rank0"), BadSlideLedger(tmp_path, "rank1")
    assert a.add("s2", "/x/s2.h5: empty bag") and not a.add("s2", "/x/s2.h5: empty bag")
    b.add("s1", "/x/s1.h5: file\nnot found")  # a message stays on one line
    b.add("s2", "/x/s2.h5: empty bag")  # the same slide from another rank (DistributedSampler repeat)
    assert read_ledger(tmp_path) == {"s1": "/x/s1.h5: file not found", "s2": "/x/s2.h5: empty bag"}
    assert report_bad_slides(tmp_path, "training") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "2 slide(s) skipped as bad input (training ran without them):"
    assert err[1:3] == ["  /x/s1.h5: file not found", "  /x/s2.h5: empty bag"]
    assert list(pd.read_csv(tmp_path / LEDGER_FILE).slide_id) == ["s1", "s2"]
    assert report_bad_slides(tmp_path / "clean", "training") == 0 and not (tmp_path / "clean" / LEDGER_FILE).exists()


def _item(sid: str, n: int) -> dict:
    return {"slide_id": sid, "path": f"{sid}.h5", "features": torch.ones(n, 4), "coords": torch.zeros(n, 2)}


def test_collate_moves_unreadable_items_aside() -> None:
    bad = {"slide_id": "b", "path": "b.h5", "error": "b.h5: 'features' has non-finite values"}
    batch = collate_bags([_item("a", 3), bad, _item("c", 5)])
    assert (
        batch["slide_id"] == ["a", "c"]
        and batch["features"].shape == (2, 5, 4)
        and batch["bad"] == [("b", bad["error"])]
    )
    only_bad = collate_bags([bad])
    assert is_empty(only_bad) and only_bad["bad"] == [("b", bad["error"])]
    assert not is_empty(batch)


@pytest.mark.parametrize("mode", ["skip", "error"])
def test_callback_records_or_stops(tmp_path: Path, mode: str) -> None:
    cb = BadSlideCallback(tmp_path, mode)
    cb.ledger = BadSlideLedger(tmp_path, "rank0")  # what setup() makes from the trainer's rank
    batch = collate_bags([_item("a", 2), {"slide_id": "b", "path": "b.h5", "error": "b.h5: empty bag"}])
    if mode == "error":
        with pytest.raises(InputError, match=r"^b\.h5: empty bag$"):
            cb.on_train_batch_start(None, None, batch, 0)
        assert read_ledger(tmp_path) == {}
    else:
        cb.on_train_batch_start(None, None, batch, 0)
        cb.on_validation_batch_start(None, None, batch, 0)
        assert read_ledger(tmp_path) == {"b": "b.h5: empty bag"}


def test_unknown_mode_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"on_bad_slide='maybe': use one of \['skip', 'error'\]"):
        BadSlideCallback(tmp_path, "maybe")


def test_dataset_reads_of_a_nan_bag_become_a_marker(tmp_path: Path) -> None:
    from wsisum.data.bags import write_bag
    from wsisum.data.datasets import BagDataset

    feats = np.ones((3, 4), np.float32)
    feats[1, 1] = np.nan
    write_bag(tmp_path / "n.h5", feats)
    item = BagDataset([tmp_path / "n.h5"], ["n"])[0]
    assert item["slide_id"] == "n" and "n.h5: 'features' has non-finite values" in item["error"]


def test_values_are_scanned_once_per_unchanged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The NaN/Inf scan costs as much as the read: once per file and process, again only if it changes."""
    import wsisum.data.bags as bags
    from wsisum.data.bags import write_bag
    from wsisum.data.datasets import BagDataset

    scans = []
    real = bags.check_finite
    monkeypatch.setattr(bags, "check_finite", lambda *a: scans.append(a[1]) or real(*a))
    path = tmp_path / "a.h5"
    write_bag(path, np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64))
    ds = BagDataset([path], ["a"])
    for _ in range(3):
        assert "error" not in ds[0]
    assert scans == ["features", "coords"]  # the first epoch only
    feats = np.ones((3, 4), np.float32)
    feats[2, 0] = np.inf
    write_bag(path, feats, np.zeros((3, 2), np.int64))  # replaced (new mtime): scanned again
    os.utime(path, ns=(1, 1))  # even with a clock too coarse to tell the writes apart
    assert "non-finite values" in ds[0]["error"]
    assert "non-finite values" in ds[0]["error"]  # a bad file is never remembered as checked
