"""Faults on the output side, made real: a small tmpfs that fills up, a read-only mount, a file where a
directory should be. Each gives one `error:` line naming the place, no traceback, nothing
half-written, and the same command completes once the fault is cleared.

The tmpfs tests need a mount (root with CAP_SYS_ADMIN, as in CI); elsewhere they skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from wsisum.data.bags import read_bag
from wsisum.errors import EXIT_DISK_FULL

PATCHES_PER_SLIDE = 64


def _run(app: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"wsisum.apps.{app}", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _mount_tmpfs(where: Path, size: str, *options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    opts = ",".join([f"size={size}", *options])
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True).returncode == 0
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MB tmpfs (room for a few checkpoints): the tests fill it to the kilobytes they want left."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "32m"):
        pytest.skip("needs root and permission to mount a tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave_kb: int) -> Path:
    """Fill `disk` up to `leave_kb` free kilobytes; removing the returned file frees the space again."""
    filler = disk / "filler"
    free_kb = shutil.disk_usage(disk).free // 1024
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)
    return filler


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert "Exception ignored" not in r.stderr, r.stderr[-3000:]


def _temps(path: Path) -> list[Path]:
    return sorted(path.rglob(".tmp-*"))


def test_an_unwritable_output_dir_is_one_line_before_work(tiny_cohort: Path, tmp_path: Path) -> None:
    """A file where a directory should be (any user, any file system): summarize, train's run dir, synth."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = _run(
        "summarize", f"data.root={tiny_cohort}", "sampler=random", "budget=4", f"out_dir={blocker}/s", cwd=tmp_path
    )
    assert (
        r.returncode == 1
        and r.stderr.strip() == f"error: {blocker}/s: cannot write the summary directory here (Not a directory)"
    )
    r = _run("train", f"data.root={tiny_cohort}", f"hydra.run.dir={blocker}/run", cwd=tmp_path)
    assert (
        r.returncode == 1
        and r.stderr.strip() == f"error: {blocker}: cannot write the run directory here (a file, not a directory)"
    )
    r = _run("synth", f"out_dir={blocker}/cohort", "preset=tiny", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    _no_traceback(r)


def test_a_read_only_mount_is_one_line(tiny_cohort: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "1m", "ro"):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        r = _run("summarize", f"data.root={tiny_cohort}", "sampler=random", "budget=4", f"out_dir={ro}/s", cwd=tmp_path)
        assert r.returncode == 1
        assert r.stderr.strip() == f"error: {ro}/s: cannot write the summary directory here (Read-only file system)"
        r = _run("train", f"data.root={tiny_cohort}", f"hydra.run.dir={ro}/x/run", cwd=tmp_path)
        assert r.returncode == 1 and _error_lines(r.stderr) == [
            f"error: {ro}/x: cannot write the run directory here (Read-only file system)"
        ]
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.parametrize("path", ["single", "workers", pytest.param("ddp", marks=pytest.mark.slow)])
def test_summarize_stops_at_a_full_disk_then_resumes(
    tiny_cohort: Path, small_disk: Path, tmp_path: Path, path: str
) -> None:
    out = small_disk / "summaries"
    how = {"single": ["workers=0"], "workers": ["workers=2"], "ddp": ["workers=0", "trainer=ddp_sim"]}[path]
    args = [f"data.root={tiny_cohort}", "sampler=random", f"budget={PATCHES_PER_SLIDE}", f"out_dir={out}"]
    args += ["progress=false", f"cache_dir={tmp_path / 'cache'}", *how]
    filler = _fill(small_disk, leave_kb=200)
    r = _run("summarize", *args, cwd=tmp_path)
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    _no_traceback(r)
    (line,) = _error_lines(r.stderr)
    assert "no space left (disk full or over quota)" in line and str(out) in line and "re-run" in line
    if path != "ddp":  # the process paths say exactly one line, and how far they got
        assert r.stderr.strip() == line and " slides done" in line
    assert not _temps(small_disk), _temps(small_disk)
    finished = sorted(out.rglob("*.h5"))
    assert finished, "the disk had room for some summaries"
    for p in finished:  # every summary left behind is complete
        bag = read_bag(p)
        assert bag.n_patches == bag.attrs["n_kept"] == min(PATCHES_PER_SLIDE, bag.attrs["n_source"])
    filler.unlink()
    again = _run("summarize", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    n_slides = sum(1 for _ in (tiny_cohort / "h5_files").rglob("*.h5"))
    assert len(list(out.rglob("*.h5"))) == n_slides and not _temps(small_disk)


@pytest.mark.slow  # three trainings
def test_train_on_a_full_disk_keeps_the_good_last_checkpoint(
    tiny_cohort: Path, small_disk: Path, tmp_path: Path
) -> None:
    run = small_disk / "run"
    last = run / "checkpoints" / "last.ckpt"
    args = [
        f"data.root={tiny_cohort}",
        "model=tiny",
        "pool.size=32",
        f"pool.cache_dir={tmp_path / 'clusters'}",
        "logger=csv",
        f"hydra.run.dir={run}",
        "ckpt_path=auto",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]
    first = _run("train", *args, "trainer.max_epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    good = last.read_bytes()
    filler = _fill(small_disk, leave_kb=40)  # room for the run-dir probe and Hydra's record, not a checkpoint
    r = _run("train", *args, "trainer.max_epochs=3", cwd=tmp_path)
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    _no_traceback(r)
    (line,) = _error_lines(r.stderr)
    assert line.startswith(f"error: {run}") and "no space left (disk full or over quota)" in line
    assert last.read_bytes() == good and not _temps(small_disk)  # the failed save replaced nothing
    filler.unlink()
    again = _run("train", *args, "trainer.max_epochs=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("leave_kb", [8, 28])
def test_evaluate_on_a_full_disk_is_one_line(
    tiny_cohort: Path, small_disk: Path, tmp_path: Path, leave_kb: int
) -> None:
    """8 KB: the run-dir probe finds it before Hydra writes its record; 28 KB: Hydra's record fits and
    evaluate's own checkpoint or metrics do not."""
    run = small_disk / "eval"
    args = [f"data.root={tiny_cohort}", "task=syn_brca", "mil=meanpool", "folds=[0]", "trainer.max_epochs=1"]
    args += [f"hydra.run.dir={run}", "threads=1", "trainer.enable_progress_bar=false", "logger=csv"]
    filler = _fill(small_disk, leave_kb=leave_kb)
    r = _run("evaluate", *args, cwd=tmp_path)
    assert r.returncode == EXIT_DISK_FULL, r.stderr[-3000:]
    _no_traceback(r)
    (line,) = _error_lines(r.stderr)
    where = small_disk if leave_kb == 8 else run
    assert line.startswith(f"error: {where}") and "no space left (disk full or over quota)" in line, line
    assert not _temps(small_disk)
    filler.unlink()
    again = _run("evaluate", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "metrics.csv").is_file()
