"""kill -9 at random points of wsisum-summarize (process pool and DDP) and wsisum-train, then re-run.

A killed run must cost nothing: every file left behind is complete and valid (or absent), the
re-run does only what is missing, and training continues from `last.ckpt`. The kill points are
random; the seed is printed so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, make_cohort
from wsisum.data.bags import read_bag
from wsisum.data.datamodules import _in_val
from wsisum.runlock import LOCK_FILE, describe

SEED = int(os.environ.get("WSISUM_KILL_SEED", random.randrange(10_000)))
N_SLIDES = 40


def _cmd(app: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"wsisum.apps.{app}", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _kill_when(args: list[str], cwd: Path, ready: Callable[[], bool], delay: float, timeout: float = 240) -> None:
    """Start the command in its own process group; once `ready()`, wait `delay` s and SIGKILL the group
    (workers, DDP ranks and all), as a node failure or `scancel` would."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"the run ended before it was killed (kill seed {SEED}); make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _summaries(out: Path) -> list[Path]:
    return sorted(out.rglob("*.h5"))


def _check_summaries(out: Path, budget: int, finished: bool) -> None:
    """Every summary is complete and valid; a kill may leave a temp file (never named like an output),
    which the next run removes: after a finished run there is none."""
    if finished:
        assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")], "a partial file was left behind"
    for p in _summaries(out):
        bag = read_bag(p)  # complete and valid
        assert len(bag.extras["indices"]) == budget == bag.n_patches


@pytest.fixture(scope="module")
def big_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "cohort"
    make_cohort(root, {"big": [4000] * N_SLIDES}, dim=64, teachers={})
    return root


# ddp (two spawned ranks killed three times, 33 s) runs with the slow tests: the default run keeps <= 10 min
@pytest.mark.parametrize("path", ["single", "workers", pytest.param("ddp", marks=pytest.mark.slow)])
def test_summarize_killed_at_three_random_points_then_completes(big_cohort: Path, tmp_path: Path, path: str) -> None:
    rng = random.Random(f"{SEED}-{path}")
    out = tmp_path / "summ"
    how = {"single": ["workers=0"], "workers": ["workers=2"], "ddp": ["workers=0", "trainer=ddp_sim"]}[path]
    args = _cmd(
        "summarize", f"data.root={big_cohort}", "sampler=kmeans", "budget=32", f"out_dir={out}", "progress=false", *how
    )
    counts = []
    for target in sorted(rng.sample(range(2, N_SLIDES // 2), 3)):  # a rank writes ~10 summaries/s: keep room
        _kill_when(args, tmp_path, lambda t=target: len(_summaries(out)) >= t, delay=rng.uniform(0, 0.1))
        _check_summaries(out, 32, finished=False)
        counts.append(len(_summaries(out)))
    assert counts[-1] < N_SLIDES, f"kill seed {SEED}: the last kill came after the end"
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"kill seed {SEED}\n{r.stderr[-3000:]}"
    assert f"{N_SLIDES - counts[-1]} summarized, {counts[-1]} already done" in r.stdout, r.stdout
    _check_summaries(out, 32, finished=True)
    assert len(_summaries(out)) == N_SLIDES
    assert not (out / ".wsisum_outcomes").exists()


def _ckpt_epoch(path: Path) -> int | None:
    """The epoch a last.ckpt holds; it must load whenever it exists (a kill mid-save leaves the old one)."""
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def test_train_killed_twice_resumes_from_last_ckpt(tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-train")
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [60] * 10}, dim=16)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    epochs = 40
    args = _cmd(
        "train",
        f"data.root={root}",
        "model=tiny",
        "pool.size=24",
        "pool.n_clusters=4",
        "val_fraction=0.2",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={epochs}",
        f"hydra.run.dir={run}",
        "ckpt_path=auto",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    )
    seen = []
    for _ in range(2):
        start = _ckpt_epoch(last) or 0
        step = rng.randint(2, 8)
        _kill_when(args, tmp_path, lambda s=start + step: (_ckpt_epoch_safe(last) or 0) >= s, rng.uniform(0, 0.5))
        seen.append(_ckpt_epoch(last))
    assert seen[0] is not None and seen[1] is not None and seen[1] > seen[0], f"kill seed {SEED}: {seen}"
    assert seen[1] < epochs - 1, f"kill seed {SEED}: the run finished before the second kill"
    dead = json.loads((run / LOCK_FILE).read_text())  # the named run dir's lock, left by the killed run
    r = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"kill seed {SEED}\n{r.stderr[-3000:]}"
    assert f"taking over a stale lock ({describe(dead)}: its process is gone)" in r.stderr
    assert f"resuming from {last}" in r.stderr + r.stdout
    assert not (run / LOCK_FILE).exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    n_train = sum(not _in_val(f"dsA-{i:03d}", 0, 0.2) for i in range(10))  # steps per epoch (batch 1)
    assert ckpt["epoch"] == epochs - 1 and ckpt["global_step"] == epochs * n_train, (ckpt["epoch"], ckpt["global_step"])
    # the resumed run trained only the epochs that were left: its log starts after the last saved epoch
    logged = pd.read_csv(run / "csv" / "metrics.csv")["epoch"].dropna()
    assert logged.min() == seen[1] + 1 and logged.max() == epochs - 1


def _ckpt_epoch_safe(path: Path) -> int | None:
    """Polling while the run writes: a checkpoint being renamed into place can vanish between calls."""
    try:
        return _ckpt_epoch(path)
    except (OSError, EOFError, RuntimeError):
        return None
