"""Cluster file systems: reads skip HDF5's file lock, and a bag that another process still holds
open for writing is one bad slide (one line), not a crash and not a half-read bag."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO, make_cohort
from wsisum.data.bags import bag_info, read_bag, write_bag
from wsisum.data.embeddings import read_embedding, write_embedding
from wsisum.data.hdf5 import open_h5
from wsisum.errors import InputError

WORDS = "being written by another process"


@contextmanager
def held_open(path: Path, mode: str = "a", libver: str | None = None) -> Iterator[None]:
    """Another process holding `h5py.File(path, mode)` open (HDF5's default locking: a writer's
    exclusive lock for 'a'), until the block ends."""
    code = (
        "import sys, h5py\n"
        f"f = h5py.File({str(path)!r}, {mode!r}, libver={libver!r})\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _locking(path: Path) -> bool:
    with open_h5(path) as f:
        return bool(f.id.get_access_plist().get_file_locking()[0])


def test_reads_skip_hdf5_locking_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_bag(tmp_path / "a.h5", np.ones((4, 3), np.float32))
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    assert not _locking(path)
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    assert not _locking(path)
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "TRUE")
    assert _locking(path)


@pytest.mark.parametrize("hdf5_locking", [None, "TRUE"], ids=["default", "HDF5_USE_FILE_LOCKING=TRUE"])
def test_every_reader_names_a_bag_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hdf5_locking: str | None
) -> None:
    if hdf5_locking is None:
        monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    else:
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", hdf5_locking)
    bag = write_bag(tmp_path / "bag.h5", np.ones((4, 3), np.float32))
    emb = write_embedding(tmp_path / "emb.h5", np.ones(5))
    for path, read in ((bag, read_bag), (bag, bag_info), (emb, read_embedding)):
        with held_open(path), pytest.raises(InputError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: {WORDS}"), str(err.value)
        read(path)  # once the writer is gone, the same file reads


def test_readers_do_not_block_each_other(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bag.h5", np.ones((4, 3), np.float32))
    with held_open(bag, mode="r"):  # another reader, with HDF5's own (shared) lock
        assert read_bag(bag).n_patches == 4


def test_a_writer_marked_in_the_superblock_is_named_too(tmp_path: Path) -> None:
    """A writer with the newest file format marks the file open for write; HDF5 refuses to read it
    even without locks (also after that writer was killed: the message says how to clear it)."""
    path = tmp_path / "latest.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["features"] = np.ones((4, 3), np.float32)
    with held_open(path, libver="latest"), pytest.raises(InputError, match=WORDS):
        bag_info(path)


def test_summarize_reports_the_bag_being_written_and_does_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [6] * 5})
    busy = root / "h5_files" / "dsA" / "dsA-002.h5"
    out = tmp_path / "summaries"
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    env |= {"PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "wsisum.apps.summarize", f"data.root={root}", "sampler=random", "budget=3"]
    cmd += [f"out_dir={out}", "progress=false", "workers=2"]
    with held_open(busy):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    hits = [line for line in r.stderr.splitlines() if WORDS in line]
    assert len(hits) == 1 and f"{busy}: {WORDS}" in hits[0], r.stderr[-3000:]
    assert "1 slide(s) failed:" in r.stderr
    assert sorted(p.stem for p in out.rglob("*.h5")) == ["dsA-000", "dsA-001", "dsA-003", "dsA-004"]
