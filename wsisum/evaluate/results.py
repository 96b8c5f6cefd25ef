"""The tidy `metrics.csv` that every evaluation run writes and every aggregation reads, and the
per-slide test predictions (`predictions/*.csv`) next to it.

One row per (task, sampler, budget, mil, fold, seed, metric) with its value; `budget` is empty for
full bags, and a (fold, seed) pair is one replicate (files written before seeds read as seed 0). Metric names: `test_<m>` / `val_<m>` for m in auroc, balanced_accuracy, f1_macro, accuracy,
loss (val_* of the selected checkpoint), and the cost of training: `epoch_time_s` (median wall time
of a training epoch), `fit_time_s`, `peak_rss_mb`, `peak_rss_increase_mb`, `peak_gpu_mem_mb`,
`patches_per_bag`, `patches_per_bag_max`, plus `epochs`, `best_epoch`, `n_train`, `n_val`, `n_test`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError

COLUMNS = ("task", "sampler", "budget", "mil", "fold", "seed", "metric", "value")
OLD_COLUMNS = tuple(c for c in COLUMNS if c != "seed")  # metrics.csv from before seeds (seed 0)
FULL = "full"  # the sampler label of full bags (budget left empty)
METRICS_FILE = "metrics.csv"


@dataclass(frozen=True)
class RunLabel:
    """What a run evaluated: the key columns shared by all its rows."""

    task: str
    sampler: str
    budget: int | None
    mil: str


def rows_for_fold(label: RunLabel, fold: int, values: Mapping[str, float | int | None], seed: int = 0) -> list[dict]:
    """Tidy rows of one (fold, seed) replicate; metrics whose value is None are left out (NaN is kept:
    it means undefined)."""
    out = []
    for metric, value in values.items():
        if value is None:
            continue
        out.append(
            {
                "task": label.task,
                "sampler": label.sampler,
                "budget": label.budget,
                "mil": label.mil,
                "fold": int(fold),
                "seed": int(seed),
                "metric": metric,
                "value": float(value),
            }
        )
    return out


def to_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    df["budget"] = df["budget"].astype("Int64")
    df["fold"] = df["fold"].astype(int)
    df["seed"] = df["seed"].fillna(0).astype(int)
    df["value"] = df["value"].astype(float)
    return df


def write_metrics(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write (atomically) the rows as a tidy CSV with exactly the `COLUMNS`."""
    path = Path(path)
    df = to_frame(rows)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def write_predictions(path: Path, preds: list[dict], classes: Sequence[str]) -> None:
    """Write (atomically) one row per test slide: target, predicted class and each class's probability."""
    rows = []
    for p in preds:
        row = {"slide_id": p["slide_id"], "target": classes[p["target"]]}
        probs = p["probs"]
        row["prediction"] = classes[max(range(len(probs)), key=probs.__getitem__)]
        row.update({f"prob_{c}": v for c, v in zip(classes, probs)})
        rows.append(row)
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read one metrics.csv, checking its columns; a file without `seed` (before seeds) gets seed 0."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"task": str, "sampler": str, "mil": str, "metric": str}, keep_default_na=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable metrics CSV: {err}") from None
    if "seed" not in df.columns and all(c in df.columns for c in OLD_COLUMNS):
        df.insert(list(df.columns).index("fold") + 1, "seed", 0)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing} (a metrics.csv has {', '.join(COLUMNS)})")
    df = df[list(COLUMNS)].copy()
    df["budget"] = pd.to_numeric(df["budget"], errors="coerce").astype("Int64")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    return df


def is_tidy_metrics(path: Path) -> bool:
    """True for a metrics.csv of ours (Lightning's CSVLogger writes files of the same name)."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return header in (list(COLUMNS), list(OLD_COLUMNS))


def find_metrics(paths: Iterable[str | Path]) -> list[Path]:
    """Our metrics.csv files: given directly, or anywhere under the given directories."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(f for f in sorted(p.rglob(METRICS_FILE)) if is_tidy_metrics(f))
        else:
            raise InputError(p, "no such file or directory")
    return found
