"""Paired retrieval comparisons: a summary set against every other set of its budget and the full
bags, with a bootstrap CI over query cases.

A retrieval run has one value per metric (every slide queries once), so the table of the retrieval
section has no spread. Its per-query outcomes (`predictions.csv`: the vote of the 5 nearest and
AP@5 of each query slide) pair across bag sets as the (fold, seed) replicates of MIL results do:
the same query searched on two sets. Slides of one case are left out together, so the case is the
unit: each query's outcome is averaged over its case's slides, and the bootstrap resamples cases
(`wsisum.evaluate.paired`, with `case_id` as the replicate). A cell is therefore a mean over cases,
which differs from the run's own mean over queries where cases hold several slides.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError
from wsisum.evaluate import paired
from wsisum.evaluate.results import FULL, METRICS_FILE, read_metrics
from wsisum.report.comparisons import metric_label, pairs_range, verdict_legend
from wsisum.report.render import Section
from wsisum.report.tables import paired_table
from wsisum.retrieve.run import PREDICTIONS_FILE

log = logging.getLogger(__name__)

VOTE, MAP = "test_majority_vote_at_5", "test_map_at_5"
KEYS = ("task", "mil", "budget")
CASE = "case_id"
PAIRED_FILE = "retrieval_paired.csv"
PREDICTION_COLUMNS = ("distance", "slide_id", "case_id", "target", "vote_at_5", "ap_at_5")


def _run_outcomes(pred_path: Path) -> pd.DataFrame | None:
    """One retrieval run's per-query outcomes with its task, sampler and budget (from the metrics.csv
    beside it); None for a predictions.csv without one (not a finished run)."""
    metrics_path = pred_path.with_name(METRICS_FILE)
    if not metrics_path.is_file():
        log.info("%s: no %s beside it, left out of the paired retrieval", pred_path, METRICS_FILE)
        return None
    label = read_metrics(metrics_path).iloc[0]
    try:
        pred = pd.read_csv(pred_path, dtype={"slide_id": str, "case_id": str, "target": str, "vote_at_5": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(pred_path, f"unreadable predictions CSV: {err}") from None
    missing = [c for c in PREDICTION_COLUMNS if c not in pred.columns]
    if missing:
        raise InputError(pred_path, f"missing column(s) {missing} (wsisum-retrieve writes {list(PREDICTION_COLUMNS)})")
    answered = pred["vote_at_5"].notna() & (pred["vote_at_5"] != "")  # a query without neighbours: no outcome
    return pd.DataFrame(
        {
            "task": label["task"],
            "sampler": label["sampler"],
            "budget": label["budget"],
            "mil": "retrieval_" + pred["distance"].astype(str),
            "slide_id": pred["slide_id"],
            CASE: pred["case_id"],
            VOTE: np.where(answered, (pred["vote_at_5"] == pred["target"]).astype(float), np.nan),
            MAP: pd.to_numeric(pred["ap_at_5"], errors="coerce"),
        }
    )


def case_outcomes(retrieve_dir: Path) -> pd.DataFrame | None:
    """Every retrieval run under `retrieve_dir`, one row per (task, sampler, budget, mil, case): the
    case's mean vote@5 accuracy and mean AP@5 (queries without an AP left out). None without runs."""
    frames = [f for p in sorted(Path(retrieve_dir).rglob(PREDICTIONS_FILE)) if (f := _run_outcomes(p)) is not None]
    if not frames:
        return None
    queries = pd.concat(frames, ignore_index=True)
    group = ["task", "sampler", "budget", "mil", CASE]
    return queries.groupby(group, dropna=False, sort=True)[[VOTE, MAP]].mean().reset_index()


def with_full_at_each_budget(cases: pd.DataFrame) -> pd.DataFrame:
    """The full-bag rows repeated at every summary budget of their task and distance, so that a summary
    pairs with the full bags as with any baseline of its budget."""
    full = cases[cases["sampler"] == FULL]
    summ = cases[(cases["sampler"] != FULL) & cases["budget"].notna()]
    budgets = summ[["task", "mil", "budget"]].drop_duplicates()
    repeated = full.drop(columns="budget").merge(budgets, on=["task", "mil"])
    return pd.concat([summ, repeated[cases.columns]], ignore_index=True)


def retrieval_winner_matrix(cases: pd.DataFrame, candidate: str = paired.REFERENCE) -> pd.DataFrame:
    """The candidate minus every other set of its budget (the full bags included), on the vote@5
    accuracy and on mAP@5, paired by query case; `paired.PAIRED_COLUMNS` per (task, distance, budget)."""
    frame = with_full_at_each_budget(cases)
    names = sorted(set(frame["sampler"].astype(str)))
    baselines = [s for s in names if s != candidate and not paired.is_variant(s, candidate)]
    parts = [
        paired.winner_matrix(frame, candidate, metric, baselines, keys=KEYS, pair_on=(CASE,)) for metric in (VOTE, MAP)
    ]
    return pd.concat(parts, ignore_index=True)


def retrieval_paired_section(
    retrieve_dir: Path, out_dir: Path, candidate: str = paired.REFERENCE
) -> tuple[Section | None, dict[str, Path]]:
    """(the section, files written); (None, {}) when retrieval did not run or the candidate has no
    retrieval run."""
    cases = case_outcomes(retrieve_dir) if Path(retrieve_dir).is_dir() else None
    if cases is None or candidate not in set(cases["sampler"].astype(str)):
        return None, {}
    matrix = retrieval_winner_matrix(cases, candidate)
    if matrix.empty:
        return None, {}
    written = {"retrieval_paired": out_dir / PAIRED_FILE}
    with atomic_path(written["retrieval_paired"]) as tmp:
        matrix.to_csv(tmp, index=False, float_format="%.10g")
    sec = Section(f"Retrieval: {candidate} vs every baseline, paired by query case", "retrieval-paired")
    sec.blocks.append(
        f"Each cell: `{candidate}` minus the column's bag set (`{FULL}`: the full bags) on the same query "
        f"slides: verdict, mean paired difference, its CI, and in how many cases `{candidate}` did better "
        f"(wins/cases). A query's outcome is averaged over its case's slides and the {paired.CONFIDENCE:.0%} "
        f"percentile bootstrap ({paired.N_RESAMPLES:,} resamples, seeded) resamples the {pairs_range(matrix)} query "
        f"cases. {verdict_legend(f'`{candidate}`')}"
    )
    for metric in (VOTE, MAP):
        sub = matrix[matrix["metric"] == metric]
        if not sub.empty:
            sec.blocks.append(f"{metric_label(metric)}, per case (0 to 1):")
            sec.blocks.append(paired_table(sub, "baseline", KEYS))
    return sec, written
