"""scripts/compare_runs.py tells two run dirs apart by a summary's indices or one metric value, and
finds two copies of a run identical (how a no-behaviour-change claim is checked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "compare_runs.py"


def make_run(run: Path) -> Path:
    for sampler in ("kmeans_16", "wsisum_16"):
        for slide in ("S1", "S2"):
            path = run / "summaries" / sampler / "dsA" / f"{slide}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                f["indices"] = np.arange(16) * (2 if slide == "S1" else 3)
                f.attrs["sampler"] = sampler.split("_")[0]
    rows = [
        ("syn_brca", sampler, 16, "abmil", fold, 0, "test_auroc", 0.8 + fold / 100)
        for sampler in ("kmeans", "wsisum")
        for fold in range(3)
    ]
    cols = ["task", "sampler", "budget", "mil", "fold", "seed", "metric", "value"]
    rows += [("syn_brca", "kmeans", 16, "abmil", 0, 0, "fit_time_s", 1.0)]
    pd.DataFrame(rows, columns=cols).to_csv(run / "results.csv", index=False)
    return run


def compare(a: Path, b: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), *extra], capture_output=True, text=True)


def test_a_copy_is_identical_and_one_change_is_found(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    timed = pd.read_csv(b / "results.csv")
    timed.loc[timed.metric == "fit_time_s", "value"] = 2.5  # no two runs take the same time: not compared
    timed.to_csv(b / "results.csv", index=False)
    same = compare(a, b)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "summaries: 4 bags in 2 sets compared index for index: identical" in same.stdout
    assert "results.csv: 6 values compared (largest difference 0): identical" in same.stdout
    assert "retrieval.csv: in neither run: identical" in same.stdout

    with h5py.File(b / "summaries" / "wsisum_16" / "dsA" / "S2.h5", "r+") as f:
        idx = f["indices"][()]
        idx[-1] += 1
        f["indices"][...] = idx
    table = pd.read_csv(b / "results.csv")
    table.loc[3, "value"] += 1e-4
    table.to_csv(b / "results.csv", index=False)
    other = compare(a, b)
    assert other.returncode == 1
    assert "other indices: wsisum_16/dsA/S2.h5" in other.stdout
    assert "results.csv: 6 values compared (largest difference 0.0001): 1 differ" in other.stdout
    assert "'sampler': 'wsisum', 'budget': 16, 'mil': 'abmil', 'fold': 0" in other.stdout
    assert (
        "results.csv: 6 values compared (largest difference 0.0001): identical"
        in compare(a, b, "--atol", "1e-3").stdout
    )


def test_a_missing_summary_or_run_is_a_difference(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "summaries" / "kmeans_16" / "dsA" / "S1.h5").unlink()
    out = compare(a, b)
    assert out.returncode == 1 and f"only in {a}: kmeans_16/dsA/S1.h5" in out.stdout
    empty = compare(tmp_path / "nothing", tmp_path / "nothing_either")
    assert empty.returncode == 1 and "summaries: none: 1 differ" in empty.stdout
