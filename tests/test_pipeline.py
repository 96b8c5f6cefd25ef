"""wsisum-pipeline end to end on the tiny preset: every stage, the report, and a re-run that reuses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.apps import run_app

pytestmark = pytest.mark.slow  # the whole tiny study, three times: CI runs it with the slow tests


def _pipeline(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["experiment=tiny", f"run_dir={tmp_path / 'run'}", f"cohort.root={tmp_path / 'cohort'}", *extra]
    return run_app("pipeline", *args, cwd=tmp_path, timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("pipeline")
    return tmp, _pipeline(tmp)


def test_every_stage_ran(study) -> None:
    tmp, proc = study
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "run"
    summary = json.loads((run / "study.json").read_text())
    samplers, budgets, tasks = ["random", "kmeans", "wsisum"], [8, 32], ["syn_brca", "syn_camelyon17"]
    expected = {"cohort", "train"} | {f"summarize/{s}_{b}" for s in samplers for b in budgets}
    expected |= {f"evaluate/{t}/{s}_{b}" for t in tasks for s in samplers for b in budgets}
    expected |= {"summarize/wsisum-teacher_8"} | {f"evaluate/{t}/wsisum-teacher_8" for t in tasks}
    expected |= {f"evaluate/{t}/full" for t in tasks}
    expected |= {f"retrieve/{t}/{s}_{b}" for t in tasks for s in samplers for b in budgets}
    expected |= {f"retrieve/{t}/full" for t in tasks}
    assert set(summary["stages"]) == expected and set(summary["stages"].values()) == {"ran"}
    results = pd.read_csv(run / "results.csv")
    assert set(results["task"]) == set(tasks)
    assert set(results["sampler"]) == {"full", *samplers, "wsisum-teacher"}
    auroc = results[results["metric"] == "test_auroc"]
    assert len(auroc) == len(tasks) * (2 + len(samplers) * len(budgets))
    for s in samplers:
        for b in budgets:
            assert len(list((run / "summaries" / f"{s}_{b}").rglob("*.h5"))) == 64
    retrieval = pd.read_csv(run / "retrieval.csv")  # retrieval beside MIL, on the same bags
    assert set(retrieval["sampler"]) == {"full", *samplers} and set(retrieval["task"]) == set(tasks)
    assert set(retrieval["mil"]) == {"retrieval_median_min", "retrieval_mean_cosine"}
    vote = retrieval[retrieval["metric"] == "test_majority_vote_at_5"]
    assert len(vote) == 2 * len(tasks) * (1 + len(samplers) * len(budgets)) and vote["value"].between(0, 1).all()


def test_report_holds_tables_plots_heatmaps(study) -> None:
    tmp, _ = study
    report = tmp / "run" / "report"
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    for name in ("random", "kmeans", "wsisum", "full", "syn_brca", "syn_camelyon17"):
        assert name in md and name in html
    pngs = list(report.rglob("*.png"))
    assert any("heatmap" in p.name for p in pngs), [p.name for p in pngs]
    assert any("auroc" in p.name.lower() for p in pngs), [p.name for p in pngs]
    assert "data:image/png;base64," in html
    assert "## Retrieval" in md and "median_min vote@5" in md
    table = pd.read_csv(report / "retrieval_table.csv")
    assert {"full", "random", "kmeans", "wsisum"} <= set(table["sampler"])
    votes = table.filter(like="vote@5")
    assert votes.notna().any(axis=1).all() and len(table) == 2 * (1 + 3 * 2)  # one row per run, no empty ones
    assert any(p.name.startswith("majority_vote_at_5_vs_budget_retrieval_") for p in pngs)
    assert "## Retrieval: wsisum vs every baseline, paired by query case" in md
    pairs = pd.read_csv(report / "retrieval_paired.csv")  # per case, against each baseline and the full bags
    assert {"random", "kmeans", "full"} == set(pairs["baseline"]) and set(pairs["budget"]) == {8, 32}
    assert pairs["n_pairs"].gt(1).all() and pairs["verdict"].isin(["win", "tie", "loss"]).all()


def test_rerun_reuses_every_stage(study) -> None:
    tmp, _ = study
    again = _pipeline(tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    stages = json.loads((tmp / "run" / "study.json").read_text())["stages"]
    assert set(stages.values()) == {"reused"}
    changed = _pipeline(
        tmp,
        "summarize.budgets=[8]",
        "summarize.samplers=[random]",
        "evaluate.tasks=[syn_brca]",
        "++summarize.overrides.random=['sampler.seed=3']",
    )
    assert changed.returncode == 0, changed.stderr[-3000:]
    stages = json.loads((tmp / "run" / "study.json").read_text())["stages"]
    assert stages["summarize/random_8"] == "ran" and stages["evaluate/syn_brca/random_8"] == "ran"
    assert stages["train"] == "reused" and stages["evaluate/syn_brca/full"] == "reused"


def test_a_study_whose_samplers_load_no_model_skips_pretraining(tmp_path: Path) -> None:
    """The default summary needs no model: without a model-scoring variant nothing is pretrained,
    and the stage line says why."""
    proc = _pipeline(tmp_path, "summarize.ablations=[]", "evaluate.tasks=[syn_brca]", "retrieve.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped pretraining: no sampler or variant of this study loads the summarizer" in proc.stdout
    stages = json.loads((tmp_path / "run" / "study.json").read_text())["stages"]
    assert "train" not in stages and "summarize/wsisum_8" in stages
    assert not (tmp_path / "run" / "train").exists()


def test_budget_auto_runs_only_for_samplers_that_size_themselves(tmp_path: Path) -> None:
    """`summarize.budgets=[8,auto]`: mosaic gets its own-size summary set, random only the fixed one;
    evaluation, retrieval and the report take the auto set, labelled by sampler without a budget."""
    proc = _pipeline(
        tmp_path,
        "summarize.samplers=[random,mosaic]",
        "summarize.budgets=[8,auto]",
        "evaluate.tasks=[syn_brca]",
        "evaluate.full_bags=false",
        "retrieve.full_bags=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    stages = set(json.loads((run / "study.json").read_text())["stages"])
    assert {"summarize/mosaic_auto", "evaluate/syn_brca/mosaic_auto", "retrieve/syn_brca/mosaic_auto"} <= stages
    assert not any("random_auto" in s for s in stages)
    results = pd.read_csv(run / "results.csv")
    auto = results[(results["sampler"] == "mosaic") & results["budget"].isna()]
    sizes = auto[auto["metric"] == "patches_per_bag"]["value"]
    assert len(sizes) and (sizes > 0).all()  # the auto summaries' own size, reported
    assert "mosaic" in (run / "report" / "report.md").read_text()
