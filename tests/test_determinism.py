"""Same command + same seed = byte-identical summaries and the same metrics; another seed changes them.

Each run is a fresh process (the real commands), so nothing can leak from one run to the next
through module state, and the process-pool path is compared with the in-process one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from wsisum.data.bags import read_bag

SAMPLERS = ("random", "kmeans", "entropy", "location")
COST = {"epoch_time_s", "fit_time_s", "peak_rss_mb", "peak_rss_increase_mb", "peak_gpu_mem_mb"}


def _run(app: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", f"wsisum.apps.{app}", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


def _summaries(root: Path, out: Path, sampler: str, seed: int, workers: int, cwd: Path) -> dict[str, bytes]:
    _run(
        "summarize",
        f"data.root={root}",
        f"sampler={sampler}",
        "budget=16",
        f"seed={seed}",
        f"workers={workers}",
        f"out_dir={out}",
        "progress=false",
        cwd=cwd,
    )
    return {p.stem: read_bag(p).extras["indices"].astype("<i8").tobytes() for p in sorted(out.rglob("*.h5"))}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_summaries_repeat_byte_for_byte_and_follow_the_seed(tiny_cohort: Path, tmp_path: Path, sampler: str) -> None:
    first = _summaries(tiny_cohort, tmp_path / "a", sampler, 0, 0, tmp_path)
    again = _summaries(tiny_cohort, tmp_path / "b", sampler, 0, 2, tmp_path)  # other process layout
    assert first and first == again
    for sid in list(first)[:3]:  # the written features are the same bytes too
        a = read_bag(next((tmp_path / "a").rglob(f"{sid}.h5")))
        b = read_bag(next((tmp_path / "b").rglob(f"{sid}.h5")))
        assert a.features.tobytes() == b.features.tobytes()
    if sampler == "entropy":  # deterministic by design: the top-entropy patches do not depend on a seed
        return
    other = _summaries(tiny_cohort, tmp_path / "c", sampler, 1, 0, tmp_path)
    changed = sum(first[s] != other[s] for s in first)
    assert changed > len(first) // 2, f"seed 1 changed only {changed} of {len(first)} summaries"


def _evaluate(root: Path, run: Path, seed: int, cwd: Path) -> pd.DataFrame:
    _run(
        "evaluate",
        f"data.root={root}",
        "task=syn_brca",
        "mil=abmil",
        "folds=[0,1]",
        "trainer.max_epochs=3",
        f"seed={seed}",
        "threads=1",
        f"hydra.run.dir={run}",
        cwd=cwd,
    )
    df = pd.read_csv(run / "metrics.csv")
    return df[~df.metric.isin(COST)].reset_index(drop=True)


def test_evaluation_metrics_repeat_and_follow_the_seed(tiny_cohort: Path, tmp_path: Path) -> None:
    a = _evaluate(tiny_cohort, tmp_path / "a", 0, tmp_path)
    b = _evaluate(tiny_cohort, tmp_path / "b", 0, tmp_path)
    pd.testing.assert_frame_equal(a, b)
    pa = pd.read_csv(tmp_path / "a" / "predictions" / "fold_0.csv")
    pb = pd.read_csv(tmp_path / "b" / "predictions" / "fold_0.csv")
    pd.testing.assert_frame_equal(pa, pb)
    c = pd.read_csv(tmp_path / "a" / "predictions" / "fold_0.csv")
    other = _evaluate(tiny_cohort, tmp_path / "c", 1, tmp_path)
    pc = pd.read_csv(tmp_path / "c" / "predictions" / "fold_0.csv")
    prob = next(col for col in c.columns if col.startswith("prob_"))
    assert not np.allclose(pc[prob], c[prob]), "seed 1 gave the same test probabilities"
    assert len(other) == len(a)


def _train(root: Path, run: Path, seed: int, cwd: Path) -> dict[str, torch.Tensor]:
    _run(
        "train",
        f"data.root={root}",
        "model=tiny",
        "pool.size=32",
        "pool.n_clusters=4",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        f"seed={seed}",
        f"pool.cache_dir={run}/cache",
        f"hydra.run.dir={run}",
        "callbacks.progress_bar=null",
        cwd=cwd,
    )
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow  # three pretrainings (27 s): with the slow tests, so the default run keeps <= 10 min
def test_pretraining_weights_repeat_and_follow_the_seed(tiny_cohort: Path, tmp_path: Path) -> None:
    a = _train(tiny_cohort, tmp_path / "a", 0, tmp_path)
    b = _train(tiny_cohort, tmp_path / "b", 0, tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = _train(tiny_cohort, tmp_path / "c", 1, tmp_path)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
