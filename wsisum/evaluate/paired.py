"""Paired comparisons of samplers: the same (fold, seed) replicate evaluated with two samplers.

Folds differ far more from each other than samplers do, so a mean ± std per sampler hides who wins;
the difference on the same replicate does not. Everything here works on a tidy frame (one row per
replicate and metric, like `results.csv`) or on a wide one (one column per metric), so any
per-replicate table (MIL metrics, a linear probe, retrieval) can be compared the same way:

- `paired_differences(df, candidate, baseline, metric)`: per group (task, mil, budget), the
  replicates both samplers have, their mean difference, a seeded bootstrap CI, wins/ties/losses and
  a verdict (`win` when the CI lies above 0, `loss` below, `tie` otherwise, `n/a` under 2 pairs).
- `winner_matrix(df, candidate)`: the candidate against every other sampler at its budgets.
- `ablation(df, reference)`: each `<reference>-<variant>` against the reference.
- `retention(df, metric)`: summary metric / full-bag metric on the same replicate, mean and CI.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from wsisum.errors import InputError
from wsisum.evaluate.results import FULL

log = logging.getLogger(__name__)

REFERENCE = "wsisum"  # the learned sampler; `wsisum-<variant>` are its ablations
GROUP_KEYS = ("task", "mil", "budget")
REPLICATE = ("fold", "seed")
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
TIE_TOL = 1e-9  # metrics.csv keeps 6 significant digits: smaller differences are rounding, not a winner
PAIRED_COLUMNS = (
    "candidate",
    "baseline",
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "wins",
    "ties",
    "losses",
    "verdict",
    "candidate_mean",
    "baseline_mean",
)
RETENTION_COLUMNS = ("metric", "n_pairs", "retention", "ci_low", "ci_high", "summary_mean", "full_mean")


def is_variant(sampler: str, reference: str = REFERENCE) -> bool:
    """`wsisum-noquota` is an ablation variant of `wsisum`."""
    return str(sampler).startswith(f"{reference}-")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[..., float] = np.mean,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap CI of `statistic` over the values (each a paired replicate), seeded.

    Under 2 values there is nothing to resample: (nan, nan). All values equal: every resample gives
    the same statistic, so the interval is that point (BCa would divide by zero there).
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        point = float(statistic(x))
        return point, point
    with warnings.catch_warnings():  # a near-degenerate BCa warns and returns nan; we report that nan
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (x,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def verdict(n_pairs: int, low: float, high: float) -> str:
    if n_pairs < 2 or math.isnan(low) or math.isnan(high):
        return "n/a"
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def replicate_values(
    df: pd.DataFrame,
    metric: str,
    *,
    by: str = "sampler",
    keys: Sequence[str] = GROUP_KEYS,
    pair_on: Sequence[str] = REPLICATE,
) -> pd.DataFrame:
    """One `value` per (keys, by, pair_on): from a tidy frame (`metric`, `value` columns) or from the
    column named `metric` of a wide one. A missing `seed` column means seed 0 (files from before seeds);
    rows repeating a replicate are averaged, as `aggregate` does."""
    if "metric" in df.columns and "value" in df.columns:
        sub = df.loc[df["metric"] == metric, [c for c in df.columns if c not in ("metric",)]]
    elif metric in df.columns:
        sub = df.rename(columns={metric: "value"})
    else:
        raise InputError(None, f"no metric '{metric}' in the table (neither a `metric` row nor a column)")
    sub = sub.copy()
    if "seed" in pair_on and "seed" not in sub.columns:
        sub["seed"] = 0
    cols = [*keys, by, *pair_on]
    missing = [c for c in cols if c not in sub.columns]
    if missing:
        raise InputError(None, f"the table lacks column(s) {missing} needed to pair replicates")
    sub = sub[[*cols, "value"]]
    sub["value"] = pd.to_numeric(sub["value"], errors="coerce")
    if sub.duplicated(subset=cols).any():
        log.warning("%s: some (%s) repeat: their values are averaged", metric, ", ".join(cols))
        sub = sub.groupby(cols, dropna=False, sort=False)["value"].mean().reset_index()
    return sub.reset_index(drop=True)


def _groups(frame: pd.DataFrame, keys: Sequence[str]) -> Iterator[tuple[tuple, pd.DataFrame]]:
    if not keys:
        yield (), frame
        return
    for key, grp in frame.groupby(list(keys), dropna=False, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), grp


def _key_set(frame: pd.DataFrame, keys: Sequence[str]) -> set[tuple]:
    return {k for k, _ in _groups(frame, keys)}


def paired_differences(
    df: pd.DataFrame,
    candidate: str,
    baseline: str,
    metric: str = "test_auroc",
    keys: Sequence[str] = GROUP_KEYS,
    *,
    by: str = "sampler",
    pair_on: Sequence[str] = REPLICATE,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> pd.DataFrame:
    """Candidate minus baseline on the replicates (`pair_on`) both have, one row per group of `keys`
    where both samplers appear (a replicate present in only one is dropped; a NaN value drops its pair).

    Columns: the keys, then `PAIRED_COLUMNS`. wins/ties/losses count pairs (|difference| <= TIE_TOL is
    a tie); `verdict` reads the CI (see `verdict`). Every group's bootstrap uses the same `seed`.
    """
    vals = replicate_values(df, metric, by=by, keys=keys, pair_on=pair_on)
    a, b = vals[vals[by] == candidate], vals[vals[by] == baseline]
    both = sorted(_key_set(a, keys) & _key_set(b, keys), key=lambda k: tuple(map(str, k)))
    merged = a.drop(columns=by).merge(b.drop(columns=by), on=[*keys, *pair_on], suffixes=("_c", "_b"))
    merged = merged[merged["value_c"].notna() & merged["value_b"].notna()]
    merged = merged.sort_values(list(pair_on), kind="stable")  # the bootstrap sees pairs in replicate order
    by_key = dict(_groups(merged, keys))
    rows = []
    for key in both:
        grp = by_key.get(key, merged.iloc[:0])
        c, base = grp["value_c"].to_numpy(float), grp["value_b"].to_numpy(float)
        d = c - base
        lo, hi = bootstrap_ci(d, n_resamples=n_resamples, confidence=confidence, seed=seed, method=method)
        n = len(d)
        rows.append(
            {
                **dict(zip(keys, key)),
                "candidate": candidate,
                "baseline": baseline,
                "metric": metric,
                "n_pairs": n,
                "mean_diff": float(d.mean()) if n else math.nan,
                "ci_low": lo,
                "ci_high": hi,
                "wins": int((d > TIE_TOL).sum()),
                "ties": int((np.abs(d) <= TIE_TOL).sum()),
                "losses": int((d < -TIE_TOL).sum()),
                "verdict": verdict(n, lo, hi),
                "candidate_mean": float(c.mean()) if n else math.nan,
                "baseline_mean": float(base.mean()) if n else math.nan,
            }
        )
    return _frame(rows, [*keys, *PAIRED_COLUMNS])


def _frame(rows: list[dict], columns: Sequence[str]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(columns))
    if "budget" in out.columns:
        out["budget"] = pd.to_numeric(out["budget"], errors="coerce").astype("Int64")
    return out


def _samplers(df: pd.DataFrame, by: str = "sampler") -> list[str]:
    return sorted({str(s) for s in df[by].dropna().unique()})


def compare_pairs(
    df: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, sort_by: str, **kwargs
) -> pd.DataFrame:
    """`paired_differences` of every (candidate, baseline) in `pairs`, stacked and sorted by the
    group keys then `sort_by`; empty (with the columns) when no pair has data."""
    keys = kwargs.pop("keys", GROUP_KEYS)
    frames = [paired_differences(df, c, b, metric, keys, **kwargs) for c, b in pairs]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return _frame([], [*keys, *PAIRED_COLUMNS])
    return pd.concat(frames, ignore_index=True).sort_values([*keys, sort_by], ignore_index=True)


def winner_matrix(
    df: pd.DataFrame,
    candidate: str = REFERENCE,
    metric: str = "test_auroc",
    baselines: Sequence[str] | None = None,
    **kwargs,
) -> pd.DataFrame:
    """`paired_differences` of the candidate against every baseline at the same budget (default:
    every sampler but the candidate, its `<candidate>-*` ablations and full bags). Empty (with the
    columns) when the candidate is absent. kwargs go to `paired_differences`."""
    if baselines is None:
        names = _samplers(df, kwargs.get("by", "sampler"))
        baselines = [s for s in names if s not in (candidate, FULL) and not is_variant(s, candidate)]
    return compare_pairs(df, [(candidate, b) for b in baselines], metric, "baseline", **kwargs)


def ablation(df: pd.DataFrame, reference: str = REFERENCE, metric: str = "test_auroc", **kwargs) -> pd.DataFrame:
    """Each `<reference>-<variant>` sampler (candidate) against the reference (baseline): a `loss`
    means the variant is worse, i.e. what it removes helps."""
    variants = [v for v in _samplers(df, kwargs.get("by", "sampler")) if is_variant(v, reference)]
    return compare_pairs(df, [(v, reference) for v in variants], metric, "candidate", **kwargs)


def retention(
    df: pd.DataFrame,
    metric: str = "test_auroc",
    *,
    keys: Sequence[str] = ("task", "mil"),
    pair_on: Sequence[str] = REPLICATE,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
    method: str = "percentile",
) -> pd.DataFrame:
    """Summary metric / full-bag metric on the same replicate, per (task, mil, sampler, budget): the
    mean ratio and its bootstrap CI. Pairs whose full-bag value is 0 or NaN are dropped (no ratio)."""
    vals = replicate_values(df, metric, keys=[*keys, "budget"], pair_on=pair_on)
    full = vals[vals["sampler"] == FULL].drop(columns=["sampler", "budget"])
    summ = vals[(vals["sampler"] != FULL) & vals["budget"].notna()]
    merged = summ.merge(full, on=[*keys, *pair_on], suffixes=("_s", "_f"))
    ok = merged["value_s"].notna() & merged["value_f"].notna() & (merged["value_f"] != 0)
    merged = merged[ok].sort_values(list(pair_on), kind="stable")
    rows = []
    group = [*keys, "sampler", "budget"]
    for key, grp in merged.groupby(group, dropna=False, sort=True):
        r = (grp["value_s"] / grp["value_f"]).to_numpy(float)
        lo, hi = bootstrap_ci(r, n_resamples=n_resamples, confidence=confidence, seed=seed, method=method)
        rows.append(
            {
                **dict(zip(group, key)),
                "metric": metric,
                "n_pairs": len(r),
                "retention": float(r.mean()),
                "ci_low": lo,
                "ci_high": hi,
                "summary_mean": float(grp["value_s"].mean()),
                "full_mean": float(grp["value_f"].mean()),
            }
        )
    return _frame(rows, [*group, *RETENTION_COLUMNS])


def replicate_counts(df: pd.DataFrame, pair_on: Sequence[str] = REPLICATE) -> dict[str, int]:
    """How many distinct values of each replicate column the results have (seed 0 when absent)."""
    return {c: int(df[c].nunique()) if c in df.columns else 1 for c in pair_on}
