"""scripts/results_doc.py regenerates the docs' result blocks from a run dir: here a small synthetic
one, and the blocks of docs/results.md (the README links to them and holds none)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "results_doc.py"
BLOCKS = ("demo", "demo-ablation", "worlds-goals", "worlds-ablation", "speed")


def fixture_run(run: Path) -> Path:
    """A study's run dir as results_doc reads it: results.csv, study.json and report/*.csv."""
    (run / "report").mkdir(parents=True)
    rows = [
        ("toy", "test_auroc", s, b, v + 0.01 * seed)
        for s, b, v in [("wsisum", 16, 0.90), ("wsisum", 64, 0.95), ("random", 16, 0.70), ("random", 64, 0.93)]
        for seed in range(3)
    ]
    rows += [("toy", "test_auroc", "full", None, 0.97)]
    pd.DataFrame(rows, columns=["task", "metric", "sampler", "budget", "value"]).to_csv(
        run / "results.csv", index=False
    )
    (run / "study.json").write_text(
        json.dumps({"timings_s": {"cohort": 6, "summarize/random_16": 60, "evaluate/x": 120}})
    )
    paired = [
        ("wsisum", "test_auroc", "toy", b, "random", verdict, d, d - 0.02, d + 0.02)
        for b, verdict, d in [(16, "win", 0.2), (64, "tie", 0.01)]
    ]
    cols = ["candidate", "metric", "task", "budget", "baseline", "verdict", "mean_diff", "ci_low", "ci_high"]
    pd.DataFrame(paired, columns=cols).to_csv(run / "report" / "paired.csv", index=False)
    pd.DataFrame([("toy", "wsisum", 64, 0.98)], columns=["task", "sampler", "budget", "retention"]).to_csv(
        run / "report" / "retention.csv", index=False
    )
    lesions = [("toy", s, 64, hit, kept, 0.1) for s, hit, kept in [("wsisum", 1.0, 0.09), ("random", 0.5, 0.1)]]
    cols = ["dataset", "sampler", "budget", "hit_rate", "kept_lesion_fraction", "full_lesion_fraction"]
    pd.DataFrame(lesions, columns=cols).to_csv(run / "report" / "lesion_retention.csv", index=False)
    ablation = [("test_auroc", "toy", 16, "wsisum-noquota", -0.1, "loss")]
    cols = ["metric", "task", "budget", "candidate", "mean_diff", "verdict"]
    pd.DataFrame(ablation, columns=cols).to_csv(run / "report" / "ablation.csv", index=False)
    return run


def test_a_block_is_regenerated_from_a_run_dir(tmp_path: Path) -> None:
    run = fixture_run(tmp_path / "run")
    doc = tmp_path / "results.md"
    doc.write_text("intro\n\n<!-- results:demo -->\nstale 0.123\n<!-- /results:demo -->\n\noutro\n")
    args = [sys.executable, str(SCRIPT), str(run), "--title", "make demo", "--out", str(doc), "--section", "demo"]
    args += ["--parts", "stages", "tables", "goals", "ablation"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    text = doc.read_text()
    assert text.startswith("intro\n\n<!-- results:demo -->\n") and text.endswith("<!-- /results:demo -->\n\noutro\n")
    assert "stale" not in text and "from the report of `make demo`" in text
    assert "**3.1 min** in all" in text  # 6 + 60 + 120 s of stages
    assert "#### toy (held out): full bags 0.970" in text
    assert "| wsisum | 0.910 |  | 0.960 |  | 1.00 | 0.90 |" in text
    assert (
        "| random | 0.710 | **win** +0.200 [+0.180, +0.220] | 0.940 | tie +0.010 [-0.010, +0.030] | 0.50 | 1.00 |"
        in text
    )
    assert "- **toy**: 0 significant losses, 1 wins in 2 comparisons" in text and "retention@64 0.980 met" in text
    assert "| `wsisum-noquota` | -0.100 loss |" in text
    subprocess.run(args, check=True, capture_output=True, text=True)
    assert doc.read_text() == text  # a second run changes nothing


def test_the_results_blocks_live_in_docs_results_each_under_its_command() -> None:
    results = (REPO / "docs" / "results.md").read_text()
    assert not re.search(r"<!-- /?results:", (REPO / "README.md").read_text())  # the README links, never copies
    for name in BLOCKS:
        start = results.index(f"<!-- results:{name} -->")
        assert f"<!-- /results:{name} -->" in results[start:]
        before = results[:start].rsplit("```", 2)[-2]  # the last code block above the block
        assert f"--section {name}" in before or (name == "speed" and "bench_samplers.py" in before), name
