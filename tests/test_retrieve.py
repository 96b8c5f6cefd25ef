"""wsisum-retrieve: set distances and metrics against brute force, the case rule, the index cache, the app."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tests.conftest import compose_config
from wsisum.data.bad_slides import read_ledger
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.errors import InputError
from wsisum.evaluate.aggregate import aggregate, collect
from wsisum.evaluate.results import COLUMNS, read_metrics
from wsisum.retrieve.index import l2_normalise, load_or_build
from wsisum.retrieve.metrics import average_precision_at, majority_vote
from wsisum.retrieve.search import median_of_min

# --- the distance ------------------------------------------------------------------------------


def brute_median_min(q: np.ndarray, t: np.ndarray) -> float:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.median((1.0 - qn @ tn.T).min(axis=1)))


@pytest.mark.parametrize(("nq", "nt", "d"), [(1, 1, 3), (7, 40, 5), (300, 2500, 16), (64, 5, 128)])
def test_median_of_min_matches_brute_force(nq: int, nt: int, d: int) -> None:
    rng = np.random.default_rng(nq * nt)
    q, t = rng.normal(size=(nq, d)), rng.normal(size=(nt, d))
    got = median_of_min(l2_normalise(q), l2_normalise(t))
    assert got == pytest.approx(brute_median_min(q, t), abs=1e-5)
    # it is asymmetric: the query's patches look for matches in the target, not the other way round
    if nq != nt:
        assert median_of_min(l2_normalise(t), l2_normalise(q)) == pytest.approx(brute_median_min(t, q), abs=1e-5)


def test_median_of_min_is_zero_when_the_query_is_inside_the_target() -> None:
    rng = np.random.default_rng(0)
    t = l2_normalise(rng.normal(size=(50, 8)))
    assert median_of_min(t[:10], t) == pytest.approx(0.0, abs=1e-6)
    assert median_of_min(t, t[:10]) > 0.1


# --- the metrics -------------------------------------------------------------------------------


def test_majority_vote_breaks_ties_by_the_nearest() -> None:
    assert majority_vote([2, 1, 1]) == 1
    assert majority_vote([2, 1, 0]) == 2  # three-way tie: the nearest
    assert majority_vote([0, 1, 1, 0]) == 0  # 2-2 tie: the label seen first
    assert majority_vote([1, 0, 0, 1, 1]) == 1


def test_average_precision_at_5_by_hand() -> None:
    assert average_precision_at([1, 0, 1, 0, 0], n_relevant=10) == pytest.approx((1 + 2 / 3) / 5)
    assert average_precision_at([0, 1], n_relevant=1) == pytest.approx(0.5)
    assert average_precision_at([1, 1, 0, 0, 0], n_relevant=2) == pytest.approx(1.0)
    assert np.isnan(average_precision_at([0, 0, 0], n_relevant=0))


def write_toy(root: Path, slides: dict[str, np.ndarray], labels: dict[str, str], cases: dict[str, str] | None) -> None:
    """A one-dataset cohort `toy` with hand-made features, labels/toy.csv (with case_id if given)."""
    for sid, x in slides.items():
        n = len(x)
        write_bag(root / "h5_files" / "toy" / f"{sid}.h5", x.astype(np.float32), np.zeros((n, 2), np.int64))
    (root / "labels").mkdir(parents=True, exist_ok=True)
    head = "slide_id,label" + (",case_id" if cases else "")
    lines = [f"{s},{labels[s]}" + (f",{cases[s]}" if cases else "") for s in slides]
    (root / "labels" / "toy.csv").write_text("\n".join([head, *lines]) + "\n")


def toy_overrides(root: Path, tmp_path: Path, classes: str = "[a,b,c]") -> list[str]:
    return [
        f"data.root={root}",
        "task.name=toy",
        "task.labels=labels/toy.csv",
        "task.datasets=[toy]",
        f"task.classes={classes}",
        f"index_dir={tmp_path / 'index'}",
    ]


def run_app(overrides: list[str], out: Path):
    from wsisum.apps.retrieve import retrieve

    return retrieve(compose_config("retrieve", overrides, out))


def brute_force(slides: dict[str, np.ndarray], labels: dict[str, str], cases: dict[str, str]) -> dict:
    """Every metric of a median-of-min leave-one-case-out search, computed the slow obvious way."""
    ids = list(slides)
    n = len(ids)
    dist = np.array([[brute_median_min(slides[a], slides[b]) for b in ids] for a in ids])
    votes = {k: [] for k in (1, 3, 5)}
    aps, y = [], [labels[s] for s in ids]
    for i, a in enumerate(ids):
        cand = [j for j in range(n) if cases[ids[j]] != cases[a]]
        ranked = sorted(cand, key=lambda j: (dist[i, j], j))[:5]
        lab = [labels[ids[j]] for j in ranked]
        for k in votes:
            c = Counter(lab[:k])
            top = max(c.values())
            votes[k].append(next(v for v in lab[:k] if c[v] == top))
        rel = [v == labels[a] for v in lab]
        r = sum(labels[ids[j]] == labels[a] for j in cand)
        hits, s = 0, 0.0
        for i_rank, hit in enumerate(rel, 1):
            hits += hit
            s += hits / i_rank if hit else 0.0
        if r:
            aps.append(s / min(5, r))
    out = {f"test_majority_vote_at_{k}": float(np.mean(np.array(v) == np.array(y))) for k, v in votes.items()}
    out["test_f1_macro_at_5"] = float(f1_score(y, votes[5], average="macro"))
    out["test_map_at_5"] = float(np.mean(aps))
    return out


def test_metrics_agree_with_brute_force_on_a_toy_cohort(tmp_path: Path) -> None:
    """Three classes along three directions, noisy enough that some votes are wrong; 2-slide cases."""
    rng = np.random.default_rng(3)
    dirs = np.eye(6)[:3] * 2.0
    slides, labels, cases = {}, {}, {}
    for i in range(15):
        c = i % 3
        mix = dirs[c] + (dirs[(c + 1) % 3] if i in (4, 9) else 0.0)  # two confusing slides
        slides[f"s{i:02d}"] = mix + rng.normal(scale=1.3, size=(int(rng.integers(5, 30)), 6))
        labels[f"s{i:02d}"] = "abc"[c]
        cases[f"s{i:02d}"] = f"p{i // 2}"
    write_toy(tmp_path / "toy", slides, labels, cases)
    res = run_app([*toy_overrides(tmp_path / "toy", tmp_path), "distances=[median_min]"], tmp_path / "run")
    expected = brute_force(slides, labels, cases)
    got = {m: res.value("median_min", m) for m in expected}
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.3 < expected["test_majority_vote_at_1"] < 1.0  # the toy is neither trivial nor hopeless
    assert res.value("median_min", "n_test") == 15 and res.value("median_min", "query_time_s") > 0


def test_leave_one_case_out_never_retrieves_the_twin(tmp_path: Path) -> None:
    """s0 and its twin s0b (same case, same features, other label than the rest of class a) would
    find each other first; with case_id they must not; without it (one case per slide) they do."""
    rng = np.random.default_rng(0)
    base = {c: rng.normal(size=8) * 3 for c in "ab"}
    slides = {f"{c}{i}": base[c] + rng.normal(size=(12, 8)) for c in "ab" for i in range(4)}
    slides["a0b"] = slides["a0"].copy()
    labels = {s: s[0] for s in slides}
    cases = {s: f"case-{s}" for s in slides} | {"a0b": "case-a0"}
    write_toy(tmp_path / "with", slides, labels, cases)
    run_app(toy_overrides(tmp_path / "with", tmp_path, "[a,b]"), tmp_path / "run1")
    pred = pd.read_csv(tmp_path / "run1" / "predictions.csv")
    assert set(pred["distance"]) == {"median_min", "mean_cosine"}
    for _, row in pred.iterrows():
        same_case = {s for s in slides if cases[s] == row["case_id"]}
        assert not same_case & set(row["neighbours"].split(";")), row.to_dict()
    write_toy(tmp_path / "without", slides, labels, None)
    run_app(toy_overrides(tmp_path / "without", tmp_path, "[a,b]"), tmp_path / "run2")
    pred = pd.read_csv(tmp_path / "run2" / "predictions.csv").set_index(["distance", "slide_id"])
    for distance in ("median_min", "mean_cosine"):
        assert pred.loc[(distance, "a0"), "neighbours"].split(";")[0] == "a0b"
        assert pred.loc[(distance, "a0b"), "neighbours"].split(";")[0] == "a0"


# --- the index ---------------------------------------------------------------------------------


def test_index_is_reused_then_rebuilt_when_a_bag_changes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    slides = {f"s{i}": rng.normal(size=(20 + i, 4)) for i in range(4)}
    root = tmp_path / "toy"
    write_toy(root, slides, {s: "a" for s in slides}, None)
    path = tmp_path / "index.h5"
    first = load_or_build(Cohort(root), path, max_patches=8, seed=0)
    assert not first.reused and list(first.offsets) == [0, 8, 16, 24, 32]
    assert list(first.n_patches) == [20, 21, 22, 23]
    again = load_or_build(Cohort(root), path, max_patches=8, seed=0)
    assert again.reused and np.array_equal(again.features, first.features)
    # the seeded subsample is the same on a rebuild; the mean covers every patch
    mean = slides["s2"].mean(0)
    assert np.allclose(first.means[2], mean / np.linalg.norm(mean), atol=1e-6)
    bag = root / "h5_files" / "toy" / "s2.h5"
    write_bag(bag, read_bag(bag).features[:5] * 2, np.zeros((5, 2), np.int64))
    st = bag.stat()
    os.utime(bag, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on a coarse clock
    rebuilt = load_or_build(Cohort(root), path, max_patches=8, seed=0)
    assert not rebuilt.reused and list(rebuilt.offsets) == [0, 8, 16, 21, 29]
    assert np.array_equal(rebuilt.patches(0), first.patches(0))
    assert not load_or_build(Cohort(root), path, max_patches=4, seed=0).reused  # other parameters, rebuilt


def test_a_bad_bag_is_reported_and_the_others_are_searched(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    slides = {f"s{i}": rng.normal(size=(10, 4)) + (i % 2) * 3 for i in range(6)}
    root = tmp_path / "toy"
    write_toy(root, slides, {s: "ab"[int(s[1]) % 2] for s in slides}, None)
    bad = root / "h5_files" / "toy" / "s3.h5"
    x = read_bag(bad).features
    x[2] = np.nan
    write_bag(bad, x, np.zeros((10, 2), np.int64))
    for run in ("run1", "run2"):  # built, then reused: the bad slide is reported both times
        res = run_app([*toy_overrides(root, tmp_path, "[a,b]")], tmp_path / run)
        assert res.value("median_min", "n_test") == 5
        ledger = read_ledger(tmp_path / run)
        assert list(ledger) == ["s3"] and "non-finite values" in ledger["s3"] and str(bad) in ledger["s3"]
    assert res.index is not None and res.index.reused
    with pytest.raises(InputError, match="non-finite"):
        run_app([*toy_overrides(root, tmp_path, "[a,b]"), "data.on_bad_slide=error"], tmp_path / "run3")


# --- the app on the tiny cohort ----------------------------------------------------------------


def test_app_on_the_tiny_cohort_full_and_summaries(tiny_cohort: Path, tmp_path: Path) -> None:
    common = [f"data.root={tiny_cohort}", "task=syn_brca", f"index_dir={tmp_path / 'index'}"]
    full = run_app([*common, "max_patches_per_slide=100"], tmp_path / "full")
    df = read_metrics(tmp_path / "full" / "metrics.csv")
    assert list(df.columns) == list(COLUMNS) and set(df["sampler"]) == {"full"} and df["budget"].isna().all()
    assert set(df["mil"]) == {"retrieval_median_min", "retrieval_mean_cosine"} and set(df["fold"]) == {0}
    assert full.value("median_min", "patches_per_bag_max") == 100
    assert full.value("median_min", "test_majority_vote_at_5") >= 0.8  # tiny's subtypes are far apart
    assert full.value("median_min", "test_map_at_5") >= 0.8
    assert full.value("mean_cosine", "test_majority_vote_at_5") >= 0.8
    # a summary set: 16 random patches per slide, labelled from the bags' attrs
    out = tmp_path / "sum"
    rng = np.random.default_rng(0)
    for h5 in sorted((tiny_cohort / "h5_files" / "syn_tcga_brca").glob("*.h5")):
        bag = read_bag(h5)
        idx = np.sort(rng.choice(bag.n_patches, 16, replace=False))
        write_bag(
            out / "syn_tcga_brca" / h5.name,
            bag.features[idx],
            bag.coords[idx],
            attrs={"sampler": "random", "budget": 16},
        )
    summ = run_app([*common, f"bags={out}"], tmp_path / "summ")
    assert summ.labels["median_min"].sampler == "random" and summ.labels["median_min"].budget == 16
    assert summ.value("mean_cosine", "patches_per_bag_max") == 16  # auto: summaries are not capped
    agg = aggregate(collect([tmp_path / "full", tmp_path / "summ"]))
    row = agg[(agg["metric"] == "test_majority_vote_at_5") & (agg["mil"] == "retrieval_median_min")]
    assert sorted(row["sampler"]) == ["full", "random"] and (row["n"] == 1).all()
    pred = pd.read_csv(tmp_path / "summ" / "predictions.csv")
    assert len(pred) == 2 * summ.value("median_min", "n_test") and pred["query_time_s"].gt(0).all()
    with pytest.raises(InputError, match="applies to summary bags only"):
        run_app([*common, "budget=16"], tmp_path / "bad")
    with pytest.raises(InputError, match="distances="):
        run_app([*common, "distances=[nope]"], tmp_path / "bad")


def test_index_loads_only_the_slides_asked_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    slides = {f"s{i}": rng.normal(size=(5 + i, 3)) for i in range(5)}
    write_toy(tmp_path / "toy", slides, {s: "a" for s in slides}, None)
    whole = load_or_build(Cohort(tmp_path / "toy"), tmp_path / "i.h5")
    part = load_or_build(Cohort(tmp_path / "toy"), tmp_path / "i.h5", keep={"s1", "s3"})
    assert part.reused and part.slide_ids == ["s1", "s3"] and list(part.offsets) == [0, 6, 14]
    assert np.array_equal(part.patches(1), whole.patches(3)) and np.array_equal(part.means[0], whole.means[1])
