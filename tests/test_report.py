"""The study report: built from a real run dir (summaries of the tiny cohort, metrics of a quick
mean-pooling logistic regression), checked against numbers computed here from the same files."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.labels import read_labels
from wsisum.data.splits import read_split, split_files
from wsisum.errors import InputError
from wsisum.evaluate.results import RunLabel, rows_for_fold, write_metrics
from wsisum.report import build_report
from wsisum.report.lesions import SlideLesion, retention_frame
from wsisum.report.rundir import open_run_dir, resolve_cohort_root
from wsisum.sampling.samplers import EntropySampler, KMeansSampler, RandomSampler
from wsisum.summarize.run import summarize_cohort

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# evaluation task -> (labels/splits name, dataset) of the tiny cohort
TASKS = {"syn_brca": ("brca", "syn_tcga_brca"), "syn_camelyon17": ("camelyon17", "syn_camelyon17")}
SETS = [("random", 16), ("random", 64), ("kmeans", 16), ("kmeans", 64), ("entropy", 16)]
MIL = "meanpool_logreg"


def _sampler(name: str):
    return {"random": RandomSampler(0), "kmeans": KMeansSampler(0, n_clusters=8), "entropy": EntropySampler(0)}[name]


def _macro_auroc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes that have positives and negatives in this fold."""
    from sklearn.metrics import roc_auc_score

    scores = [
        roc_auc_score(y == c, proba[:, j]) for j, c in enumerate(classes) if 0 < (y == c).sum() < len(y)
    ]  # fmt: skip
    return float(np.mean(scores)) if scores else math.nan


def _evaluate(bag_dir: Path, cohort: Path, task: str, sampler: str, budget: int | None) -> list[dict]:
    """A real (if quick) evaluation: mean-pooled features, logistic regression, fold by fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score

    lab, ds = TASKS[task]
    labels = read_labels(cohort / "labels" / f"{lab}.csv")
    feats = {p.stem: read_bag(p).features for p in (bag_dir / ds).glob("*.h5")}
    rows = []
    for fold, path in split_files(cohort / "splits" / lab).items():
        split = read_split(path)
        tracemalloc.start()
        t0 = time.perf_counter()  # one "epoch": pool the bags of the fold, fit
        bags = {s: feats[s].astype(np.float32) for s in (*split.train, *split.test)}
        x = {s: b.mean(0, dtype=np.float64) for s, b in bags.items()}
        ytr = np.array([labels.label_of[s] for s in split.train])
        clf = LogisticRegression(max_iter=300).fit(np.stack([x[s] for s in split.train]), ytr)
        fit_s = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        yte = np.array([labels.label_of[s] for s in split.test])
        proba = clf.predict_proba(np.stack([x[s] for s in split.test]))
        pred = clf.classes_[proba.argmax(1)]
        with warnings.catch_warnings():  # a small test fold may lack a class the model predicts
            warnings.simplefilter("ignore", UserWarning)
            bacc = balanced_accuracy_score(yte, pred)
        values = {
            "test_auroc": _macro_auroc(yte, proba, clf.classes_),
            "test_balanced_accuracy": bacc,
            "test_f1_macro": f1_score(yte, pred, average="macro", zero_division=0),
            "epoch_time_s": fit_s,
            "peak_rss_mb": peak,
            "patches_per_bag": float(np.mean([len(b) for b in bags.values()])),
        }
        rows += rows_for_fold(RunLabel(task, sampler, budget, MIL), fold, values)
    return rows


@pytest.fixture(scope="module")
def study_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RUN_DIR as wsisum-pipeline lays it out, made for real on the tiny cohort."""
    import faiss

    run = tmp_path_factory.mktemp("study") / "run"
    cohort = Cohort(tiny_cohort)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # k-means on 100-patch bags: OpenMP threads only contend
    try:
        for name, budget in SETS:
            report = summarize_cohort(
                cohort, _sampler(name), budget, run / "summaries" / f"{name}_{budget}", progress=False
            )
            assert report.ok, report.failed
    finally:
        faiss.omp_set_num_threads(threads)
    everything = []
    for task in TASKS:
        rows = _evaluate(tiny_cohort / "h5_files", tiny_cohort, task, "full", None)
        write_metrics(run / "evaluate" / task / "full" / "metrics.csv", rows)
        everything += rows
        for name, budget in SETS:
            rows = _evaluate(run / "summaries" / f"{name}_{budget}", tiny_cohort, task, name, budget)
            write_metrics(run / "evaluate" / task / f"{name}_{budget}" / "metrics.csv", rows)
            everything += rows
    write_metrics(run / "results.csv", everything)
    study = {
        "cohort_root": str(tiny_cohort),
        "stages": {"summarize": "ran", "evaluate": "ran", "evaluate/extra": "failed"},
        "errors": {"evaluate/extra": "exit code 1"},
        "config": {"samplers": sorted({s for s, _ in SETS}), "budgets": [16, 64]},
        "timings_s": {"summarize": 2.0, "evaluate": 4.5, "evaluate/extra": 0.3},
    }
    (run / "study.json").write_text(json.dumps(study))
    return run


@pytest.fixture(scope="module")
def built(study_run: Path) -> dict[str, Path]:
    return build_report(study_run)


def _md_table(md: str, first_header: str, must_have: str) -> tuple[list[str], list[list[str]]]:
    """The pipe table of report.md whose header starts with `first_header` and names `must_have`."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header and must_have in cells:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip().strip("*") for c in row.strip().strip("|").split("|")])
            return cells, rows
    raise AssertionError(f"no table with {first_header!r} and {must_have!r} in report.md")


def _is_png(data: bytes) -> bool:
    import io

    import matplotlib.image as mpimg

    if data[:8] != PNG_MAGIC:
        return False
    img = mpimg.imread(io.BytesIO(data), format="png")
    return img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_report_holds_every_table_plot_and_heatmap(built: dict[str, Path], study_run: Path) -> None:
    out = study_run / "report"
    for key in ("markdown", "html", "results", "results_table", "cost_storage", "cost_mil", "lesion_retention"):
        assert key in built and built[key].is_file(), key
    assert (out / "figures" / f"auroc_vs_budget_{MIL}.png").is_file()
    assert (out / "figures" / "lesion_retention_vs_budget.png").is_file()
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in ("## Run", "## Results", "## Cost", "## Lesion retention", "## Selection heatmaps"):
        assert section in md
    assert "| summarize | 2.0 | ran |" in md and "| evaluate/extra | 0.3 | failed: exit code 1 |" in md
    for text in (md, html):
        for task in TASKS:
            assert task in text
        for name, budget in SETS:
            assert f"| {name} | {budget} |" in md and name in html
    # every figure report.md shows exists and is a real PNG; the HTML embeds exactly those bytes
    figs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    heatmaps = [f for f in figs if Path(f).name.startswith("heatmap_")]
    assert len(heatmaps) == 3 and len(figs) == 5
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(figs) == html.count("<img ")
    for rel, b64 in zip(figs, embedded):
        data = (out / rel).read_bytes()
        assert _is_png(data), rel
        assert base64.b64decode(b64) == data
    # self-contained: no script, no stylesheet link, no URL that leaves the file
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"https?://|file://|//[a-z0-9.-]+\.[a-z]{2,}/", html)
    assert all(v.startswith("data:image/png;base64,") for v in re.findall(r'src="([^"]*)"', html))
    assert all(v.startswith("#") for v in re.findall(r'href="([^"]*)"', html))
    assert "url(" not in html


def test_results_table_is_mean_and_std_over_folds(built: dict[str, Path], study_run: Path) -> None:
    md = (study_run / "report" / "report.md").read_text()
    head, rows = _md_table(md, "task", "AUROC")
    col = {c: j for j, c in enumerate(head)}
    shown = {(r[col["task"]], r[col["sampler"]], r[col["budget"]]): r for r in rows}
    expected_keys = {(t, "full", "all") for t in TASKS} | {(t, s, str(b)) for t in TASKS for s, b in SETS}
    assert set(shown) == expected_keys
    for task in TASKS:  # the full-bag reference row comes first in its task
        assert next(r for r in rows if r[col["task"]] == task)[col["sampler"]] == "full"
    for (task, sampler, budget), row in shown.items():
        sub = "full" if sampler == "full" else f"{sampler}_{budget}"
        df = pd.read_csv(study_run / "evaluate" / task / sub / "metrics.csv")
        for metric, header in (("test_auroc", "AUROC"), ("test_balanced_accuracy", "balanced accuracy")):
            v = df.loc[df["metric"] == metric, "value"].dropna().to_numpy()
            assert len(v) >= 2
            assert row[col[header]] == f"{v.mean():.3f} ± {v.std(ddof=1):.3f}", (task, sampler, budget, metric)
        assert row[col["replicates"]] == str(df["fold"].nunique())  # one seed: a replicate per fold


def test_paired_sections_come_first_without_wsisum(built: dict[str, Path], study_run: Path) -> None:
    """No `wsisum` in this run: the winner matrix says so; retention against the full bags is there."""
    md = built["markdown"].read_text()
    assert md.index("## wsisum vs every baseline") < md.index("## Retention of the full-bag result")
    assert md.index("## Retention of the full-bag result") < md.index("## Results")
    assert "No `wsisum` results in this run" in md and "## Ablation" not in md
    assert "paired" not in built and not (study_run / "report" / "paired.csv").exists()
    ret = pd.read_csv(built["retention"])
    assert set(zip(ret["sampler"], ret["budget"])) == set(SETS) and (ret["n_pairs"] == 3).all()
    _, rows = _md_table(md, "task", "budget 16")
    assert len(rows) == len(TASKS) * len({s for s, _ in SETS})


def _paired_results(seeds: tuple[int, ...] = (0, 1), folds: int = 3) -> pd.DataFrame:
    """Tidy results of 2 tasks where wsisum clearly beats random, ties kmeans, and its ablation loses."""
    rng = np.random.default_rng(0)
    rows = []
    for task in ("t1", "t2"):
        for fold in range(folds):
            for seed in seeds:
                full = 0.9 + 0.03 * fold + rng.normal(0, 0.005)
                vals = {("full", None): full}
                for b in (16, 64):
                    ws = full - 0.01 + rng.normal(0, 0.002)
                    vals |= {
                        ("wsisum", b): ws,
                        ("random", b): ws - 0.08 + rng.normal(0, 0.01),
                        ("kmeans", b): ws + (0.004 if (fold + seed) % 2 else -0.004),
                        ("wsisum-noquota", b): ws - 0.03 + rng.normal(0, 0.005),
                    }
                for (sampler, budget), v in vals.items():
                    rows.append(
                        dict(task=task, sampler=sampler, budget=budget, mil="abmil", fold=fold, seed=seed,
                             metric="test_auroc", value=v)
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_report_leads_with_winner_matrix_retention_and_ablation(tmp_path: Path) -> None:
    from wsisum.evaluate import paired
    from wsisum.evaluate.aggregate import collect
    from wsisum.report.tables import RETAINED, VERDICT_STYLES, paired_cell

    run = tmp_path / "run"
    run.mkdir()
    _paired_results().to_csv(run / "results.csv", index=False)
    written = build_report(run, heatmap_slides=0)
    md, html = written["markdown"].read_text(), written["html"].read_text()
    order = ["## wsisum vs every baseline", "## Retention of the full-bag result", "## Ablation", "## Results"]
    assert [md.index(h) for h in order] == sorted(md.index(h) for h in order)
    df = collect([run / "results.csv"])
    expected = paired.winner_matrix(df)
    pd.testing.assert_frame_equal(pd.read_csv(written["paired"]), pd.read_csv(run / "report" / "paired.csv"))
    assert set(expected["baseline"]) == {"kmeans", "random"} and len(expected) == 2 * 2 * 2
    assert set(expected.loc[expected["baseline"] == "random", "verdict"]) == {"win"}
    assert set(expected.loc[expected["baseline"] == "kmeans", "verdict"]) == {"tie"}
    n_pairs = 3 * 2  # 3 folds x 2 seeds
    assert (expected["n_pairs"] == n_pairs).all()
    assert f"Each cell pairs {n_pairs} (fold, seed) replicates" in md
    assert "bootstrap" in md and "over the paired (fold, seed) replicates" in md
    fig = written["paired_difference_vs_budget"]
    assert _is_png(fig.read_bytes()) and f"](figures/{fig.name})" in md
    assert md.index(fig.name) < md.index("## Retention of the full-bag result")
    head, rows = _md_table(md, "task", "random")
    assert head == ["task", "mil", "budget", "kmeans", "random"]
    for r in expected.to_dict("records"):
        row = next(x for x in rows if x[0] == r["task"] and x[2] == str(r["budget"]))
        cell = paired_cell(r)
        assert row[head.index(r["baseline"])] == cell
        assert re.match(r"[▲=] (win|tie) [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \d+/\d+$", cell)
        if r["verdict"] == "win":
            assert f'style="{VERDICT_STYLES["win"]}">{cell}</td>' in html
    # retention: bold where the mean keeps >= 0.98 of the full-bag AUROC
    ret = pd.read_csv(written["retention"])
    assert len(ret) == 2 * 4 * 2
    for r in ret.to_dict("records"):
        cell = f"{r['retention']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        assert (f"**{cell}**" in md) == (r["retention"] >= RETAINED), r
    assert (ret.loc[ret["sampler"] == "random", "retention"] < RETAINED).all()
    assert (ret.loc[ret["sampler"] == "wsisum", "retention"] >= RETAINED).all()
    # ablation: the variant against wsisum, a loss everywhere
    ab = pd.read_csv(written["ablation"])
    assert set(ab["candidate"]) == {"wsisum-noquota"} and set(ab["verdict"]) == {"loss"}
    head, rows = _md_table(md, "task", "wsisum-noquota")
    assert all(row[3].startswith("▼ loss -0.0") for row in rows) and len(rows) == 4
    # the results table still shows mean ± std over the replicates
    head, rows = _md_table(md, "task", "AUROC")
    assert {r[head.index("replicates")] for r in rows} == {"6"}
    # without the ablation variants, the next report drops their section and CSV
    res = pd.read_csv(run / "results.csv")
    res[~res["sampler"].str.startswith("wsisum-")].to_csv(run / "results.csv", index=False)
    written = build_report(run, heatmap_slides=0)
    assert "ablation" not in written and not (run / "report" / "ablation.csv").exists()
    assert "## Ablation" not in written["markdown"].read_text()


def test_cost_tables_match_files_and_metrics(built: dict[str, Path], study_run: Path, tiny_cohort: Path) -> None:
    storage = pd.read_csv(built["cost_storage"])
    md = (study_run / "report" / "report.md").read_text()
    head, rows = _md_table(md, "sampler", "storage full/this")
    col = {c: j for j, c in enumerate(head)}
    for name, budget in SETS:
        files = sorted((study_run / "summaries" / f"{name}_{budget}").rglob("*.h5"))
        full = [tiny_cohort / "h5_files" / f.parent.name / f.name for f in files]
        nbytes, full_bytes = sum(f.stat().st_size for f in files), sum(f.stat().st_size for f in full)
        kept = np.mean([h5py.File(f, "r")["features"].shape[0] for f in files])
        n_full = np.mean([h5py.File(f, "r")["features"].shape[0] for f in full])
        r = storage[(storage["sampler"] == name) & (storage["budget"] == budget)].iloc[0]
        assert (r["bytes"], r["full_bytes"], r["slides"]) == (nbytes, full_bytes, 64)
        assert r["patches_per_slide"] == pytest.approx(kept) and kept <= budget < n_full
        row = next(x for x in rows if x[col["sampler"]] == name and x[col["budget"]] == str(budget))
        assert row[col["storage full/this"]] == f"{full_bytes / nbytes:.1f}×"
        assert row[col["patches full/this"]] == f"{n_full / kept:.1f}×"
    # MIL cost: epoch time and peak memory of each run against the full-bag run of its task
    head, rows = _md_table(md, "task", "epoch time (s)")
    col = {c: j for j, c in enumerate(head)}
    for task in TASKS:
        full = pd.read_csv(study_run / "evaluate" / task / "full" / "metrics.csv")
        for name, budget in SETS:
            mine = pd.read_csv(study_run / "evaluate" / task / f"{name}_{budget}" / "metrics.csv")
            row = next(
                x
                for x in rows
                if x[col["task"]] == task and x[col["sampler"]] == name and x[col["budget"]] == str(budget)
            )
            for metric, ratio_col in (("epoch_time_s", "epoch time full/this"), ("peak_rss_mb", "peak RSS full/this")):
                ref = full.loc[full["metric"] == metric, "value"].mean()
                val = mine.loc[mine["metric"] == metric, "value"].mean()
                assert row[col[ratio_col]] == f"{ref / val:.1f}×"


def test_heatmaps_show_lesion_slides_of_different_datasets(built: dict[str, Path], tiny_cohort: Path) -> None:
    """One slide per dataset, lesion-positive, the one with the smallest lesion (by the bags' own attrs)."""
    chosen = sorted(p.stem.split("_", 2)[2] for k, p in built.items() if k.startswith("heatmap_"))
    expected = []
    for ds in sorted(p.name for p in (tiny_cohort / "h5_files").iterdir()):
        cands = []
        for f in sorted((tiny_cohort / "h5_files" / ds).glob("*.h5")):
            with h5py.File(f, "r") as h:
                n_lesion, n = int(h.attrs["n_lesion_patches"]), h["features"].shape[0]
            if n_lesion > 0 and n > 16:
                cands.append((n_lesion, f.stem))
        expected.append(min(cands)[1])
    assert chosen == sorted(expected)


def _hand_cohort(root: Path) -> None:
    """3 slides of 10 patches, codes 0 = stroma, 1 = metastasis; s1 lesion {2, 3}, s2 {7}, s3 none."""
    lesions = {"s1": [2, 3], "s2": [7], "s3": []}
    coords = np.stack([np.arange(10) % 5, np.arange(10) // 5], 1) * 512
    for sid, les in lesions.items():
        morph = np.zeros(10, np.int16)
        morph[les] = 1
        feats = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", feats, coords, extras={"morphology": morph})
    manifest = {
        "morphologies": ["stroma", "metastasis"],
        "lesion_morphologies": {"t": ["metastasis"]},
        "dataset_tasks": {"ds": "t"},
    }
    (root / "cohort.json").write_text(json.dumps(manifest))


def _hand_summary(run: Path, root: Path, sid: str, idx: list[int], name: str = "random_3") -> Path:
    src = read_bag(root / "h5_files" / "ds" / f"{sid}.h5")
    attrs = {"sampler": name.split("_")[0], "budget": 3, "seed": 0, "source": f"h5_files/ds/{sid}.h5", "n_source": 10}
    path = run / "summaries" / name / "ds" / f"{sid}.h5"
    return write_bag(path, src.features[idx], src.coords[idx], attrs=attrs, extras={"indices": np.array(idx)})


def test_lesion_retention_hand_checked(tmp_path: Path) -> None:
    root, run = tmp_path / "cohort", tmp_path / "run"
    _hand_cohort(root)
    _hand_summary(run, root, "s1", [0, 2, 5])  # keeps 1 of its 2 lesion patches
    _hand_summary(run, root, "s2", [0, 1, 2])  # misses its 1-patch lesion
    _hand_summary(run, root, "s3", [4, 8, 9])  # lesion-negative: enters no rate
    (run / "study.json").write_text(json.dumps({"cohort_root": str(root)}))
    written = build_report(run)
    df = pd.read_csv(written["lesion_retention"])
    r = df[df["sampler"] == "random"].iloc[0]
    assert (r["lesion_slides"], r["hits"], r["small_slides"], r["small_hits"]) == (2, 1, 2, 1)
    assert r["hit_rate"] == pytest.approx(0.5)
    assert r["kept_lesion_fraction"] == pytest.approx((1 / 3 + 0 / 3) / 2)
    assert r["full_lesion_fraction"] == pytest.approx((2 / 10 + 1 / 10) / 2)
    ref = df[df["sampler"] == "full"].iloc[0]
    assert (ref["hits"], ref["hit_rate"]) == (2, 1.0)
    md = written["markdown"].read_text()
    assert "| ds (t) | random | 3 | 0.50 (1/2) | 0.50 (1/2) | 0.167 | 0.150 |" in md
    assert "No evaluation results yet" in md  # a run without evaluation still gets its report
    # a lesion of 2 patches is not "small" when the threshold is 1: only s2 counts then
    small = retention_frame(
        [SlideLesion("ds", "s1", "r", 3, 10, 2, 3, 1), SlideLesion("ds", "s2", "r", 3, 10, 1, 3, 0)], small=1
    )
    assert small.loc[small["sampler"] == "r", ["small_slides", "small_hits"]].values.tolist() == [[1, 0]]


def test_summary_that_does_not_match_its_source_is_an_error(tmp_path: Path) -> None:
    root, run = tmp_path / "cohort", tmp_path / "run"
    _hand_cohort(root)
    path = _hand_summary(run, root, "s1", [0, 2, 5])
    with h5py.File(path, "r+") as f:  # a summary of another version of the slide: coords disagree
        f["coords"][0] = [99999, 99999]
    (run / "study.json").write_text(json.dumps({"cohort_root": str(root)}))
    with pytest.raises(InputError, match=r"s1\.h5: coords differ from the source bag"):
        build_report(run)


def test_results_csv_regenerated_when_missing_or_stale(study_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(study_run, run)
    shutil.rmtree(run / "report")
    original = pd.read_csv(run / "results.csv")
    (run / "results.csv").unlink()
    written = build_report(run, heatmap_slides=0)
    regenerated = pd.read_csv(written["results"])
    keys = ["task", "sampler", "budget", "mil", "fold", "metric"]
    a, b = (d.sort_values(keys, na_position="first").reset_index(drop=True) for d in (original, regenerated))
    pd.testing.assert_frame_equal(a, b)
    # a re-evaluated run newer than results.csv wins: the report never shows the stale numbers
    metrics = run / "evaluate" / "syn_brca" / "random_16" / "metrics.csv"
    df = pd.read_csv(metrics)
    df.loc[df["metric"] == "test_auroc", "value"] = [0.11, 0.22, 0.33]
    df.to_csv(metrics, index=False)
    later = (run / "results.csv").stat().st_mtime + 5
    os.utime(metrics, (later, later))
    build_report(run, heatmap_slides=0)
    md = (run / "report" / "report.md").read_text()
    assert "| syn_brca | meanpool_logreg | random | 16 | 3 | 0.220 ± 0.110 |" in md


def test_cli_regenerates_the_report_from_saved_outputs(built: dict[str, Path], study_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"  # same name as the original: the report names its run dir
    shutil.copytree(study_run, run)
    shutil.rmtree(run / "report")
    r = subprocess.run(
        [sys.executable, "-m", "wsisum.apps.report", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (run / "report" / "report.md").read_text() == built["markdown"].read_text()
    assert (run / "report" / "report.html").is_file()
    missing = tmp_path / "no_such_run"
    r = subprocess.run(
        [sys.executable, "-m", "wsisum.apps.report", str(missing)], cwd=tmp_path, capture_output=True, text=True
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {missing}: run directory not found") and not missing.exists()


def test_positional_run_dir_becomes_an_override() -> None:
    from wsisum.apps.report import positional_run_dir

    assert positional_run_dir(["wsisum-report", "runs/a b", "heatmap_slides=1"]) == [
        "wsisum-report",
        "run_dir='runs/a b'",
        "heatmap_slides=1",
    ]
    assert positional_run_dir(["wsisum-report", "run_dir=x"]) == ["wsisum-report", "run_dir=x"]
    assert positional_run_dir(["wsisum-report", "--help"]) == ["wsisum-report", "--help"]
    assert positional_run_dir(["wsisum-report"]) == ["wsisum-report"]


def test_cohort_root_relative_to_cwd_or_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work" / "cohort").mkdir(parents=True)
    (tmp_path / "run" / "cohort2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_cohort_root("cohort", tmp_path / "run") == (tmp_path / "work" / "cohort").resolve()
    assert resolve_cohort_root("cohort2", tmp_path / "run") == (tmp_path / "run" / "cohort2").resolve()
    assert resolve_cohort_root("nowhere", tmp_path / "run") is None
    with pytest.raises(InputError, match="nothing to report"):
        open_run_dir(tmp_path / "work")


def test_report_renders_in_headless_chromium(built: dict[str, Path], study_run: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from screenshot_report import find_chromium, main, render_check
    finally:
        sys.path.remove(str(REPO / "scripts"))
    if find_chromium() is None:
        if os.environ.get("WSISUM_REQUIRE_BROWSER") == "1":  # .ci/run installs Chromium: no silent skip there
            pytest.fail("WSISUM_REQUIRE_BROWSER=1 but no Chromium found")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    import matplotlib.image as mpimg

    html = study_run / "report" / "report.html"
    n_img = html.read_text(encoding="utf-8").count("<img ")
    check = render_check(html)  # in the browser, after load: every image decoded, every table laid out
    assert check["images"] == n_img > 0 and check["broken"] == [], check
    assert check["tables"] > 0 and check["empty_tables"] == 0, check
    out = tmp_path / "shot.png"  # the screenshot stays in the test's tmp dir
    assert main([str(study_run), "--out", str(out)]) == 0
    img = mpimg.imread(out)
    assert img.shape[:2] == (2400, 1400)
    rgb = img[..., :3]
    ink = (rgb < 0.9).any(axis=2)  # anything darker than the white page: text, tables, figures
    assert 0.03 < ink.mean() < 0.9, ink.mean()
    assert ink[:200].any() and ink[1200:].any()  # the title and content far down the page both render


def test_a_heatmap_of_eight_samplers_wraps_into_rows_of_four(tmp_path: Path) -> None:
    """8 panels in one row made a 3,762 px strip; at most 4 a row keeps each slide readable."""
    import struct

    from wsisum.report.heatmaps import Panel, SlideView, draw_heatmap

    grid = np.stack(np.meshgrid(np.arange(30), np.arange(20)), -1).reshape(-1, 2) * 256
    panels = [Panel(f"s{i}", np.arange(i, 600, 40), grid[i:600:40], None) for i in range(8)]
    view = SlideView("slide", "ds", None, grid, 256, None, panels)
    png = draw_heatmap(view, 16, tmp_path / "h.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    assert width < 2000 and height > width / 3, (width, height)
