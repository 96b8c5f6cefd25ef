"""Are two study run dirs the same study? Every summary's indices, and every metric and retrieval value.

    python scripts/compare_runs.py RUN_A RUN_B [--atol 0]

For a change that must not change behaviour (a refactor, an upgrade): run the study before and after,
then compare. One line per part (summaries, results.csv, retrieval.csv) with what was compared and what
differed, the first differences listed; exit status 0 when all are identical (within --atol), 1 otherwise.
Recipe attrs and the cost metrics (times in seconds, `*_s`; memory, `*_mb`) are not compared: a refactor
may rename a recipe key without changing a summary, and no two runs take the same time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from wsisum.report.lesions import summary_indices
from wsisum.run_layout import RESULTS_FILE, RETRIEVAL_FILE, SUMMARIES_DIR

SHOWN = 5  # differences listed per part
COST_SUFFIXES = ("_s", "_mb")  # epoch_time_s, fit_time_s, query_time_s, peak memory: the machine's, not the study's


def summary_files(run: Path) -> dict[str, Path]:
    """summaries/<set>/<dataset>/<slide>.h5 by their path under summaries/."""
    root = run / SUMMARIES_DIR
    return {str(p.relative_to(root)): p for p in sorted(root.glob("*/*/*.h5"))}


def compare_summaries(a: Path, b: Path) -> tuple[str, list[str]]:
    left, right = summary_files(a), summary_files(b)
    if not left and not right:
        return "summaries: none", [f"no {SUMMARIES_DIR}/<set>/<dataset>/*.h5 in either run"]
    problems = [f"only in {a}: {k}" for k in sorted(set(left) - set(right))]
    problems += [f"only in {b}: {k}" for k in sorted(set(right) - set(left))]
    shared = sorted(set(left) & set(right))
    problems += [
        f"other indices: {k}" for k in shared if not np.array_equal(summary_indices(left[k]), summary_indices(right[k]))
    ]
    sets = len({k.split("/")[0] for k in shared})
    return f"summaries: {len(shared)} bags in {sets} sets compared index for index", problems


def compare_table(a: Path, b: Path, name: str, atol: float) -> tuple[str, list[str]]:
    """Rows keyed by every column but `value`; values equal within atol (NaN equals NaN); no cost metric."""
    if not (a / name).is_file() and not (b / name).is_file():
        return f"{name}: in neither run", []
    for run in (a, b):
        if not (run / name).is_file():
            return f"{name}: missing", [f"no {name} in {run}"]
    left, right = (pd.read_csv(run / name) for run in (a, b))
    left, right = (t[~t.metric.str.endswith(COST_SUFFIXES)] for t in (left, right))
    keys = [c for c in left.columns if c != "value"]
    if list(left.columns) != list(right.columns):
        return f"{name}: other columns", [f"{list(left.columns)} vs {list(right.columns)}"]
    merged = left.merge(right, on=keys, how="outer", suffixes=("_a", "_b"), indicator=True)
    problems = [f"only in one run: {dict(r[keys])}" for _, r in merged[merged._merge != "both"].iterrows()]
    both = merged[merged._merge == "both"]
    same = np.isclose(both.value_a, both.value_b, rtol=0.0, atol=atol, equal_nan=True)
    for _, r in both[~same].iterrows():
        problems.append(f"{dict(r[keys])}: {r.value_a} vs {r.value_b}")
    worst = float(np.nanmax(np.abs(both.value_a - both.value_b))) if len(both) else 0.0
    return f"{name}: {len(both)} values compared (largest difference {worst:.3g})", problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--atol", type=float, default=0.0, help="metric values this close count as equal")
    args = parser.parse_args(argv)
    parts = [compare_summaries(args.run_a, args.run_b)]
    parts += [compare_table(args.run_a, args.run_b, name, args.atol) for name in (RESULTS_FILE, RETRIEVAL_FILE)]
    differ = False
    for line, problems in parts:
        print(f"{line}: {'identical' if not problems else f'{len(problems)} differ'}")
        for problem in problems[:SHOWN]:
            print(f"  {problem}")
        differ |= bool(problems)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
