"""Intrinsic checks of summaries: exact lesion recall and morphology coverage on hand-made bags, the
linear probe (separable -> AUROC 1, shuffled -> 0.5, same fit as scikit-learn), teacher cosine with
a real checkpoint on the tiny cohort, and the report section on a run dir made for real."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.evaluate.paired import paired_differences
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.report import build_report
from wsisum.report.intrinsic import COLUMNS, TEACHER_MAX_SLIDES, collect_intrinsic
from wsisum.report.lesions import SlideLesion, class_recall_frame, morphology_coverage
from wsisum.report.probe import PROBE_COLUMNS, fit_logreg, macro_auroc, probe_auroc, probe_rows
from wsisum.report.rundir import open_run_dir
from wsisum.report.teacher_check import TeacherCheck, find_checkpoint
from wsisum.sampling.samplers import KMeansSampler, RandomSampler
from wsisum.summarize.run import summarize_cohort

TINY_TEACHERS = {"TITAN": 768, "CHIEF": 768, "PRISM": 1280, "GIGAPATH": 768}
TINY_MODEL = {"embed_dim": 32, "depth": 2, "heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


# --- hand-made bags: exact numbers ---------------------------------------------------------------------
# codes: 0 stroma, 1 lymph_node, 2 metastasis (the lesion), 3 adipose
MORPH = {
    "A": np.array([0] * 60 + [1] * 38 + [3, 2]),  # itc: 1 lesion patch (#99); adipose (#98) and it are rare (<= 1 %)
    "B": np.array([0] * 50 + [2] * 50),  # macro: 50 lesion patches, no rare morphology
    "C": np.array([0] * 25 + [1] * 25),  # negative
}
LABELS = {"A": "itc", "B": "macro", "C": "negative"}
KEPT = {
    "random_4": {"A": [0, 1, 60, 99], "B": [0, 1, 2, 3], "C": [0, 1, 2, 3]},
    "kmeans_4": {"A": [0, 60, 98, 99], "B": [0, 1, 50, 51], "C": [0, 1, 2, 30]},
}


def _hand_run(tmp_path: Path) -> Path:
    root, run = tmp_path / "cohort", tmp_path / "run"
    rng = np.random.default_rng(0)
    for sid, morph in MORPH.items():
        n = len(morph)
        coords = np.stack([np.arange(n) % 10, np.arange(n) // 10], 1) * 512
        feats = rng.normal(size=(n, 6)).astype(np.float32)
        attrs = {"label": LABELS[sid]}
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", feats, coords, attrs=attrs, extras={"morphology": morph})
    manifest = {
        "morphologies": ["stroma", "lymph_node", "metastasis", "adipose"],
        "lesion_morphologies": {"t": ["metastasis"]},
        "dataset_tasks": {"ds": "t"},
        "tasks": {"t": ["negative", "itc", "micro", "macro"]},
    }
    (root / "cohort.json").write_text(json.dumps(manifest))
    for name, kept in KEPT.items():
        for sid, idx in kept.items():
            src = read_bag(root / "h5_files" / "ds" / f"{sid}.h5")
            attrs = {"sampler": name.split("_")[0], "budget": 4, "seed": 0, "source": f"h5_files/ds/{sid}.h5"}
            write_bag(
                run / "summaries" / name / "ds" / f"{sid}.h5",
                src.features[idx],
                src.coords[idx],
                attrs=attrs | {"n_source": src.n_patches},
                extras={"indices": np.array(idx)},
            )
    (run / "study.json").write_text(json.dumps({"cohort_root": str(root)}))
    return run


def _value(table: pd.DataFrame, sampler: str, metric: str) -> tuple[float, int]:
    r = table[(table["sampler"] == sampler) & (table["metric"] == metric)]
    assert len(r) == 1, (sampler, metric, r)
    return float(r["value"].iloc[0]), int(r["n"].iloc[0])


def test_lesion_recall_and_coverage_are_exact(tmp_path: Path) -> None:
    res = collect_intrinsic(open_run_dir(_hand_run(tmp_path)), ckpt=None)
    t = res.table
    assert list(t.columns) == list(COLUMNS)
    assert set(t["task"]) == {"t"} and set(t["dataset"]) == {"ds"}
    # random: A keeps its 1 lesion patch (1/min(4,1) = 1), B none of 50 (0/4); C is lesion-negative
    assert _value(t, "random", "lesion_recall") == (0.5, 2)
    assert _value(t, "random", "lesion_recall:itc") == (1.0, 1)
    assert _value(t, "random", "lesion_recall:macro") == (0.0, 1)
    assert _value(t, "random", "lesion_patch_recall") == (0.5, 2)
    # coverage: A 3 of its 4 morphologies, B 1 of 2, C 1 of 2; rare: only A has them (2), keeps 1
    assert _value(t, "random", "morphology_coverage") == (pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3), 3)
    assert _value(t, "random", "rare_morphology_coverage") == (0.5, 1)
    # kmeans: both lesions found, B keeps 2 of the 4 it could
    assert _value(t, "kmeans", "lesion_recall") == (1.0, 2)
    assert _value(t, "kmeans", "lesion_patch_recall:macro") == (0.5, 1)
    assert _value(t, "kmeans", "lesion_patch_recall") == (0.75, 2)
    assert _value(t, "kmeans", "morphology_coverage") == (1.0, 3)
    assert _value(t, "kmeans", "rare_morphology_coverage") == (1.0, 1)
    # the full bags keep everything; a summary's feature cosine is below 1
    for m in ("lesion_recall", "lesion_patch_recall", "morphology_coverage", "feature_cosine"):
        assert _value(t, "full", m)[0] == pytest.approx(1.0)
    assert _value(t, "random", "feature_cosine")[0] < 0.999
    assert not (t["metric"] == "teacher_cosine").any() and res.probe.empty  # no checkpoint, no labels


def test_hand_run_report_has_the_section_and_no_stale_csv(tmp_path: Path) -> None:
    run = _hand_run(tmp_path)
    written = build_report(run)
    md = written["markdown"].read_text()
    assert "## Intrinsic checks" in md
    # per-class recall in the manifest's class order; 3 of 4, 1 of 2, 1 of 2 morphologies kept
    assert "| ds (t) | random | 4 | itc 1.00 · macro 0.00 | 0.500 | 0.583 | 0.500 |" in md
    assert (run / "report" / "intrinsic.csv").is_file()
    assert not (run / "report" / "intrinsic_probe.csv").exists()  # no labels: no probe rows
    (run / "report" / "intrinsic_probe.csv").write_text("stale\n")
    for p in (run / "summaries").rglob("*.h5"):  # no summaries left: the section and its CSVs go
        p.unlink()
    (run / "evaluate").mkdir()
    md = build_report(run)["markdown"].read_text()
    assert "Intrinsic checks" not in md
    assert not (run / "report" / "intrinsic.csv").exists() and not (run / "report" / "intrinsic_probe.csv").exists()


def test_class_recall_and_coverage_helpers() -> None:
    slides = [
        SlideLesion("d", "a", "r", 8, 100, 3, 8, 2, "itc"),  # 2 of min(8, 3)
        SlideLesion("d", "b", "r", 8, 100, 20, 8, 0, "macro"),
        SlideLesion("d", "c", "r", 8, 100, 0, 8, 0, "negative"),  # enters no rate
    ]
    df = class_recall_frame(slides).set_index("label")
    assert set(df.index) == {"all", "itc", "macro"}
    assert df.loc["all", ["lesion_slides", "hits"]].tolist() == [2, 1]
    assert df.loc["itc", "patch_recall"] == pytest.approx(2 / 3)
    assert df.loc["all", "patch_recall"] == pytest.approx((2 / 3 + 0) / 2)
    cover, rare, n, n_rare = morphology_coverage(np.array([0] * 200 + [1, 2]), np.array([0, 200]), 4)
    assert (cover, rare, n, n_rare) == (pytest.approx(2 / 3), 0.5, 3, 2)


# --- linear probe ----------------------------------------------------------------------------------------
def test_probe_separates_a_separable_set_and_not_shuffled_labels() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)) * 4
    y = np.repeat(np.arange(3), 40)
    x = centres[y] + rng.normal(size=(120, 10))
    tr, te = np.arange(120) % 2 == 0, np.arange(120) % 2 == 1
    assert probe_auroc(x[tr], y[tr], x[te], y[te], 3) > 0.99
    shuffled = [probe_auroc(x[tr], rng.permutation(y[tr]), x[te], rng.permutation(y[te]), 3) for _ in range(30)]
    assert abs(np.mean(shuffled) - 0.5) < 0.05
    assert np.isnan(probe_auroc(x[tr], np.zeros(60, int), x[te], y[te], 3))  # one training class: undefined


def test_probe_fit_matches_scikit_learn() -> None:
    sk = pytest.importorskip("sklearn.linear_model")
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)) * [1, 2, 3, 0.5, 1] + 3
    y = (x[:, 0] + rng.normal(size=80) > 3).astype(int) + (x[:, 1] > 4)
    model = fit_logreg(x, y, 3)
    z = (x - x.mean(0)) / x.std(0)
    ref = sk.LogisticRegression(C=1.0, tol=1e-10, max_iter=5000).fit(z, y)
    np.testing.assert_allclose(model.predict_proba(x), ref.predict_proba(z), atol=1e-4)
    proba = np.round(model.predict_proba(x), 2)  # rounded: ties must count half, as in roc_auc_score
    want = np.mean([roc_auc_score(y == c, proba[:, c]) for c in range(3)])  # one-vs-rest, macro
    assert macro_auroc(proba, y, 3) == pytest.approx(want, abs=1e-12)


def test_probe_rows_are_tidy_and_pair_with_paired_statistics(tiny_cohort: Path) -> None:
    means = {}
    for p in sorted((tiny_cohort / "h5_files").rglob("*.h5")):
        feats = read_bag(p).features.astype(np.float32)
        means.setdefault(("full", None), {})[p.stem] = feats.mean(0)
        means.setdefault(("random", 4), {})[p.stem] = feats[:4].mean(0)
    notes: list[str] = []
    df = probe_rows(means, tiny_cohort, notes=notes)
    assert list(df.columns) == list(PROBE_COLUMNS) and not notes
    assert set(df["task"]) == {"brca", "camelyon17", "bracs"}
    assert len(df) == 3 * 2 * 3  # tasks x bag sets x folds
    assert (df["seed"] == 0).all() and (df["metric"] == "probe_auroc").all()
    full_brca = df[(df["task"] == "brca") & (df["sampler"] == "full")]["value"]
    assert full_brca.mean() > 0.9  # the tiny cohort's subtypes are easy on purpose
    pairs = paired_differences(df, "random", "full", "probe_auroc", keys=("task", "mil"), n_resamples=200)
    assert set(pairs["n_pairs"]) == {3}


# --- teacher cosine --------------------------------------------------------------------------------------
def _checkpoint(path: Path, feature_dim: int, teachers: dict[str, int]) -> Path:
    """An (untrained) checkpoint as wsisum-train writes one: what is scored, not how well, is tested."""
    torch.manual_seed(0)
    module = SummarizerPretraining(feature_dim, teachers, model=TINY_MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(ckpt | {"pytorch-lightning_version": L.__version__}, path)
    return path


def test_teacher_cosine_of_full_pool_and_random_subset(tiny_cohort: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "last.ckpt", 32, TINY_TEACHERS)
    check = TeacherCheck(ckpt, tiny_cohort, device="cpu")
    bag_path = sorted((tiny_cohort / "h5_files" / "syn_tcga_brca").glob("*.h5"))[0]
    bag = read_bag(bag_path)
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(bag.n_patches, 16, replace=False)) for _ in range(3)] + [np.arange(bag.n_patches)]
    scores, full = check.score("syn_tcga_brca", bag_path.stem, bag.features, bag.coords, subsets)
    assert all(-1.0 <= s <= 1.0 for s in [*scores, full])
    assert scores[-1] == pytest.approx(full, abs=1e-5)  # the whole bag is the reference (under 512 patches)
    assert len(set(np.round(scores[:3], 6))) == 3  # different subsets, different scores
    assert check.score("syn_tcga_brca", "no-such-slide", bag.features, bag.coords, subsets) is None


# --- a run dir made for real ------------------------------------------------------------------------------
class StandIn(RandomSampler):
    """Labelled `wsisum` and naming its checkpoint as the real one does, at the cost of a random draw
    (the real search is its own module's test; here only what the report does with it matters)."""

    name = "wsisum"

    def describe(self) -> dict:
        return super().describe() | {"checkpoint": "last.ckpt"}


@pytest.fixture(scope="module")
def tiny_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import faiss

    run = tmp_path_factory.mktemp("intrinsic") / "run"
    ckpts = run / "train" / "checkpoints"
    _checkpoint(ckpts / "last.ckpt", 32, TINY_TEACHERS)
    _checkpoint(ckpts / "best-epoch=0.ckpt", 32, TINY_TEACHERS)  # the pipeline's pick, unless a summary names one
    cohort = Cohort(tiny_cohort)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for sampler in (RandomSampler(0), KMeansSampler(0, n_clusters=8), StandIn(1)):
            report = summarize_cohort(cohort, sampler, 8, run / "summaries" / f"{sampler.name}_8", progress=False)
            assert report.ok, report.failed
    finally:
        faiss.omp_set_num_threads(threads)
    (run / "study.json").write_text(json.dumps({"cohort_root": str(tiny_cohort)}))
    return run


def test_intrinsic_section_on_a_real_run_dir(tiny_run: Path) -> None:
    run = open_run_dir(tiny_run)
    assert find_checkpoint(run) == tiny_run / "train" / "checkpoints" / "last.ckpt"
    written = build_report(tiny_run)
    table = pd.read_csv(written["intrinsic"])
    assert list(table.columns) == list(COLUMNS)
    assert set(table["sampler"]) == {"full", "random", "kmeans", "wsisum"}
    metrics = set(table["metric"])
    assert {"probe_auroc", "teacher_cosine", "feature_cosine", "morphology_coverage"} <= metrics
    assert {"lesion_recall:itc", "lesion_recall:IC", "lesion_recall:ILC"} <= metrics  # a class of each task
    tc = table[table["metric"] == "teacher_cosine"]
    sizes = {"syn_camelyon17": 20, "syn_tcga_brca": 24, "syn_bracs": 20}  # a seeded choice of <= 16 each
    assert {(d, n) for d, n in zip(tc["dataset"], tc["n"])} == {
        (d, min(n, TEACHER_MAX_SLIDES)) for d, n in sizes.items()
    }
    probe = pd.read_csv(written["intrinsic_probe"])
    assert len(probe) == 3 * 4 * 3  # tasks x (3 samplers + full) x folds
    paired = pd.read_csv(written["intrinsic_probe_paired"])
    assert set(paired["baseline"]) == {"kmeans", "random"} and (paired["n_pairs"] == 3).all()
    md = written["markdown"].read_text()
    sec = md[md.index("## Intrinsic checks") :]
    assert "wsisum's own search objective" in sec and "Linear probe, paired" in sec
    assert "| syn_camelyon17 (camelyon17) | full | all | negative" not in sec  # negatives have no lesion
    assert "| syn_camelyon17 (camelyon17) | full | all | itc 1.00 · micro 1.00 · macro 1.00 |" in sec


def test_cohort_without_ground_truth_or_checkpoint(small_cohort: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = small_cohort
    run = tmp_path / "run"
    report = summarize_cohort(Cohort(root), RandomSampler(0), 3, run / "summaries" / "random_3", progress=False)
    assert report.ok, report.failed
    (run / "study.json").write_text(json.dumps({"cohort_root": str(root)}))
    res = collect_intrinsic(open_run_dir(run))
    assert set(res.table["metric"]) == {"feature_cosine", "probe_auroc"}  # no morphology, no checkpoint
    assert set(res.table.loc[res.table["metric"] == "feature_cosine", "task"]) == {"task"}  # from the labels
    md = build_report(run)["markdown"].read_text()
    sec = md[md.index("## Intrinsic checks") :].split("\n## ")[0]
    assert "lesion" not in sec and "teacher cos" not in sec and "probe AUROC" in sec
    (run / "study.json").unlink()  # no cohort known: nothing to check, no section
    assert collect_intrinsic(open_run_dir(run)) is None
    assert "Intrinsic checks" not in build_report(run)["markdown"].read_text()
