"""Paired retrieval comparisons: per-query outcomes of two bag sets paired by case, bootstrapped over cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsisum.errors import InputError
from wsisum.evaluate.results import RunLabel, rows_for_fold, write_metrics
from wsisum.report.retrieval_paired import (
    MAP,
    PAIRED_FILE,
    VOTE,
    case_outcomes,
    retrieval_paired_section,
    retrieval_winner_matrix,
)
from wsisum.report.tables import Table

N_CASES = 20


def _write_run(root: Path, sampler: str, budget: int | None, correct_cases: set[int], ap: float = 1.0) -> None:
    """A retrieval run dir as wsisum-retrieve leaves it: metrics.csv and predictions.csv; every case
    has two slides, case 0's second slide never has neighbours."""
    run = root / "T" / (sampler if budget is None else f"{sampler}_{budget}")
    run.mkdir(parents=True)
    write_metrics(
        run / "metrics.csv", rows_for_fold(RunLabel("T", sampler, budget, "retrieval_median_min"), 0, {"n_test": 39})
    )
    rows = []
    for c in range(N_CASES):
        for s in range(2):
            answered = not (c == 0 and s == 1)
            vote = ("a" if c in correct_cases else "b") if answered else ""
            rows.append(
                {
                    "distance": "median_min",
                    "slide_id": f"s{c}-{s}",
                    "case_id": f"c{c}",
                    "target": "a",
                    "vote_at_1": vote,
                    "vote_at_3": vote,
                    "vote_at_5": vote,
                    "ap_at_5": ap if answered else float("nan"),
                    "neighbours": "",
                    "neighbour_distances": "",
                    "query_time_s": 0.01,
                }
            )
    pd.DataFrame(rows).to_csv(run / "predictions.csv", index=False)


@pytest.fixture
def retrieve_dir(tmp_path: Path) -> Path:
    root = tmp_path / "retrieve"
    everyone = set(range(N_CASES))
    _write_run(root, "full", None, everyone)
    _write_run(root, "wsisum", 16, everyone)
    _write_run(root, "random", 16, set(range(5)), ap=0.5)
    _write_run(root, "wsisum", 64, everyone)
    return root


def test_outcomes_are_averaged_per_case(retrieve_dir: Path) -> None:
    cases = case_outcomes(retrieve_dir)
    random16 = cases[(cases["sampler"] == "random") & (cases["budget"] == 16)].set_index("case_id")
    assert len(random16) == N_CASES
    assert random16.loc["c0", VOTE] == 1.0  # the unanswered slide is left out, not counted wrong
    assert random16.loc["c7", VOTE] == 0.0 and random16.loc["c7", MAP] == 0.5


def test_candidate_against_each_baseline_and_the_full_bags_at_every_budget(retrieve_dir: Path) -> None:
    matrix = retrieval_winner_matrix(case_outcomes(retrieve_dir))
    vote = matrix[matrix["metric"] == VOTE].set_index(["budget", "baseline"])
    win = vote.loc[(16, "random")]
    assert win["n_pairs"] == N_CASES and win["mean_diff"] == pytest.approx(15 / N_CASES)
    assert win["verdict"] == "win" and 0 < win["ci_low"] < win["mean_diff"] < win["ci_high"] <= 1
    assert win["wins"] == 15 and win["ties"] == 5 and win["losses"] == 0
    # the full bags pair at both budgets (they have none of their own); equal outcomes are a tie
    for budget in (16, 64):
        same = vote.loc[(budget, "full")]
        assert same["verdict"] == "tie" and same["mean_diff"] == 0 and same["n_pairs"] == N_CASES
    assert (64, "random") not in vote.index  # random was not searched at 64
    ap = matrix[matrix["metric"] == MAP].set_index(["budget", "baseline"]).loc[(16, "random")]
    assert ap["mean_diff"] == pytest.approx(0.5) and ap["verdict"] == "win"


def test_section_and_csv(retrieve_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    section, written = retrieval_paired_section(retrieve_dir, out)
    assert section is not None and written["retrieval_paired"] == out / PAIRED_FILE
    csv = pd.read_csv(out / PAIRED_FILE)
    assert set(csv["baseline"]) == {"full", "random"} and set(csv["metric"]) == {VOTE, MAP}
    tables = [b for b in section.blocks if isinstance(b, Table)]
    assert len(tables) == 2 and any("▲ win +0.750" in cell for row in tables[0].rows for cell in row)
    # no candidate run: no section
    assert retrieval_paired_section(retrieve_dir, out, candidate="kmeans") == (None, {})
    assert retrieval_paired_section(tmp_path / "nowhere", out) == (None, {})


def test_a_broken_predictions_file_is_one_line(retrieve_dir: Path) -> None:
    bad = retrieve_dir / "T" / "random_16" / "predictions.csv"
    pd.DataFrame({"slide_id": ["x"], "case_id": ["y"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match=r"random_16/predictions.csv: missing column\(s\)"):
        case_outcomes(retrieve_dir)


def test_runs_without_metrics_are_left_out(retrieve_dir: Path) -> None:
    (retrieve_dir / "T" / "random_16" / "metrics.csv").unlink()  # an unfinished run
    cases = case_outcomes(retrieve_dir)
    assert "random" not in set(cases["sampler"]) and np.isfinite(cases[VOTE]).all()
