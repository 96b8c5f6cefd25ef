"""Paired comparisons of samplers (`wsisum.evaluate.paired`), checked against hand computations."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from wsisum.errors import InputError
from wsisum.evaluate import paired
from wsisum.evaluate.aggregate import aggregate, collect


def _tidy(values: dict[str, list[float]], *, task="t", mil="abmil", budget=16, seeds=(0, 1), metric="test_auroc"):
    """Rows of each sampler over replicates (fold, seed) in fold-major order; `full` has no budget."""
    reps = [(f, s) for f in range(len(next(iter(values.values()))) // len(seeds)) for s in seeds]
    rows = []
    for sampler, vals in values.items():
        assert len(vals) == len(reps)
        for (fold, seed), v in zip(reps, vals):
            b = pd.NA if sampler == "full" else budget
            rows.append(
                dict(task=task, sampler=sampler, budget=b, mil=mil, fold=fold, seed=seed, metric=metric, value=v)
            )
    df = pd.DataFrame(rows)
    df["budget"] = df["budget"].astype("Int64")
    return df


def _numpy_percentile_ci(d: np.ndarray, seed: int = 0, n: int = paired.N_RESAMPLES) -> tuple[float, float]:
    """The percentile bootstrap written out: resample the pairs with replacement, mean, 2.5/97.5 %."""
    idx = np.random.default_rng(seed).integers(0, len(d), (n, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def test_paired_difference_matches_hand_computation() -> None:
    # replicates (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    df = _tidy({"wsisum": [0.80, 0.75, 0.90, 0.70, 0.66, 0.81], "random": [0.78, 0.76, 0.85, 0.70, 0.60, 0.80]})
    out = paired.paired_differences(df, "wsisum", "random")
    assert len(out) == 1
    r = out.iloc[0]
    d = np.array([0.02, -0.01, 0.05, 0.0, 0.06, 0.01])
    assert (r["task"], r["mil"], r["budget"], r["candidate"], r["baseline"]) == ("t", "abmil", 16, "wsisum", "random")
    assert r["n_pairs"] == 6
    assert r["mean_diff"] == pytest.approx(d.mean()) == pytest.approx(0.021666666)
    assert (r["wins"], r["ties"], r["losses"]) == (4, 1, 1)
    assert r["candidate_mean"] == pytest.approx(np.mean([0.80, 0.75, 0.90, 0.70, 0.66, 0.81]))
    lo, hi = _numpy_percentile_ci(d)
    assert r["ci_low"] == pytest.approx(lo, abs=1e-12) and r["ci_high"] == pytest.approx(hi, abs=1e-12)
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert (round(lo, 6), round(hi, 6)) == (0.001667, 0.043333)  # the CI is above 0: a win
    assert r["verdict"] == "win"
    # the row order of the file does not change the numbers: pairs are bootstrapped in replicate order
    shuffled = paired.paired_differences(df.sample(frac=1, random_state=3), "wsisum", "random")
    pd.testing.assert_frame_equal(out, shuffled)


def test_ci_brackets_the_mean_and_shrinks_with_more_replicates() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (6, 60):
        d = rng.normal(0.02, 0.03, n)
        lo, hi = paired.bootstrap_ci(d)
        assert lo < d.mean() < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_pairing_drops_replicates_present_in_one_sampler() -> None:
    df = _tidy({"wsisum": [0.9, 0.8, 0.7, 0.6], "random": [0.8, 0.7, 0.6, 0.5]})
    extra = df.iloc[[0]].assign(seed=7, value=0.1)  # wsisum only: no random run of (fold 0, seed 7)
    lone = df.iloc[[4]].assign(fold=9, value=0.99)  # random only
    nan = df.iloc[[1]].assign(fold=5, value=np.nan)  # wsisum's value undefined on (5, 1)
    nan_b = df.iloc[[5]].assign(fold=5, value=0.5)
    out = paired.paired_differences(pd.concat([df, extra, lone, nan, nan_b]), "wsisum", "random")
    r = out.iloc[0]
    assert r["n_pairs"] == 4 and r["wins"] == 4
    assert r["mean_diff"] == pytest.approx(0.1)
    assert r["candidate_mean"] == pytest.approx(0.75) and r["baseline_mean"] == pytest.approx(0.65)


def test_groups_by_task_mil_budget_and_only_where_both_are() -> None:
    a = _tidy({"wsisum": [0.9, 0.8, 0.7, 0.6], "random": [0.8, 0.8, 0.8, 0.8]}, budget=16)
    b = _tidy({"wsisum": [0.9, 0.8, 0.7, 0.6], "random": [0.8, 0.8, 0.8, 0.8]}, budget=64, task="u")
    c = _tidy({"wsisum": [0.5, 0.5, 0.5, 0.5]}, budget=256)  # no random at 256: no row
    out = paired.paired_differences(pd.concat([a, b, c]), "wsisum", "random")
    assert list(zip(out["task"], out["budget"])) == [("t", 16), ("u", 64)]


def _diffs(d: list[float]) -> pd.DataFrame:
    base = [0.7] * len(d)
    return _tidy({"wsisum": [b + x for b, x in zip(base, d)], "random": base}, seeds=(0,))


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        ([0.05, 0.04, 0.06, 0.05, 0.045, 0.055], "win"),
        ([-0.05, -0.04, -0.06, -0.05, -0.045, -0.055], "loss"),
        ([0.03, -0.03, 0.02, -0.02, 0.01, -0.01], "tie"),
        ([0.02] * 5, "win"),  # degenerate: every pair the same, the CI is that point
        ([0.0] * 5, "tie"),
        ([0.3], "n/a"),  # one pair: nothing to resample
    ],
)
def test_verdicts(d: list[float], expected: str) -> None:
    r = paired.paired_differences(_diffs(d), "wsisum", "random").iloc[0]
    assert r["verdict"] == expected
    if len(set(d)) == 1 and len(d) > 1:
        assert r["ci_low"] == pytest.approx(d[0]) and r["ci_high"] == pytest.approx(d[0])
    if expected == "n/a":
        assert np.isnan(r["ci_low"]) and r["n_pairs"] == 1
    if expected == "tie" and d[0] == 0:
        assert (r["wins"], r["ties"], r["losses"]) == (0, 5, 0)


def test_winner_matrix_and_ablation_pick_their_samplers() -> None:
    df = _tidy(
        {
            "full": [0.9, 0.9, 0.9, 0.9],
            "wsisum": [0.85, 0.86, 0.84, 0.85],
            "random": [0.80, 0.81, 0.79, 0.80],
            "kmeans": [0.85, 0.86, 0.84, 0.85],
            "wsisum-noquota": [0.80, 0.80, 0.80, 0.81],
        }
    )
    m = paired.winner_matrix(df)
    assert list(m["baseline"]) == ["kmeans", "random"]  # not full bags, not wsisum's own ablations
    assert list(m["verdict"]) == ["tie", "win"]
    assert m.loc[m["baseline"] == "random", "mean_diff"].item() == pytest.approx(0.05)
    ab = paired.ablation(df)
    assert list(ab["candidate"]) == ["wsisum-noquota"] and set(ab["baseline"]) == {"wsisum"}
    assert ab["verdict"].item() == "loss" and ab["mean_diff"].item() == pytest.approx(-0.0475)
    assert paired.winner_matrix(df, "location").empty  # no such candidate: empty, with the columns
    assert list(paired.winner_matrix(df, "location").columns) == [*paired.GROUP_KEYS, *paired.PAIRED_COLUMNS]
    assert paired.ablation(df.assign(sampler=df["sampler"].replace("wsisum-noquota", "other"))).empty


def test_retention_on_fixed_numbers() -> None:
    df = _tidy({"full": [0.9, 0.8, 1.0, 0.5], "random": [0.81, 0.8, 0.9, 0.55]})
    orphan = df.iloc[[4]].assign(fold=3, value=0.7)  # a summary replicate without a full-bag run
    zero = pd.concat([df.iloc[[0]].assign(fold=4, value=0.0), df.iloc[[4]].assign(fold=4, value=0.5)])
    r = paired.retention(pd.concat([df, orphan, zero])).iloc[0]
    ratios = np.array([0.9, 1.0, 0.9, 1.1])
    assert (r["sampler"], r["budget"], r["n_pairs"]) == ("random", 16, 4)
    assert r["retention"] == pytest.approx(ratios.mean()) == pytest.approx(0.975)
    assert r["summary_mean"] == pytest.approx(0.765) and r["full_mean"] == pytest.approx(0.8)
    lo, hi = _numpy_percentile_ci(ratios)
    assert r["ci_low"] == pytest.approx(lo) and r["ci_high"] == pytest.approx(hi)


def test_generic_per_replicate_table_and_missing_seed() -> None:
    """A wide per-replicate table (e.g. a linear probe: one column per metric) pairs the same way;
    a table without `seed` is seed 0."""
    wide = pd.DataFrame(
        {
            "dataset": ["d"] * 6,
            "sampler": ["wsisum"] * 3 + ["random"] * 3,
            "fold": [0, 1, 2] * 2,
            "probe_auroc": [0.9, 0.8, 0.85, 0.7, 0.7, 0.75],
        }
    )
    r = paired.paired_differences(wide, "wsisum", "random", "probe_auroc", keys=("dataset",)).iloc[0]
    assert r["dataset"] == "d" and r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(0.4 / 3)
    assert r["verdict"] == "win"
    with pytest.raises(InputError, match="no metric 'nope'"):
        paired.paired_differences(wide, "wsisum", "random", "nope", keys=("dataset",))
    with pytest.raises(InputError, match=r"lacks column\(s\) \['budget'\]"):
        paired.paired_differences(wide, "wsisum", "random", "probe_auroc", keys=("dataset", "budget"))


def test_aggregate_counts_every_fold_seed_replicate(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    df = _tidy({"random": [0.7, 0.8, 0.9, 1.0]})
    agg = aggregate(df)
    r = agg.iloc[0]
    assert (
        r["n"] == 4
        and r["mean"] == pytest.approx(0.85)
        and r["std"] == pytest.approx(np.std([0.7, 0.8, 0.9, 1.0], ddof=1))
    )
    # files from before seeds (no `seed` column): read as seed 0; the duplicate warning names the seed
    old = df.drop(columns="seed")
    for name in ("a", "b"):
        old.to_csv(tmp_path / f"{name}.csv", index=False)
    with caplog.at_level(logging.WARNING):
        both = collect([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert len(both) == 8 and (both["seed"] == 0).all()
    assert "(task, sampler, budget, mil, fold, seed, metric)" in caplog.text
