"""Downstream evaluation: metrics vs scikit-learn, tasks, labels of summary bags, aggregation, the app end to end."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from tests.apps import run_app
from tests.conftest import compose_config
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.splits import write_split
from wsisum.data.tasks import TaskSpec
from wsisum.errors import InputError
from wsisum.evaluate.aggregate import aggregate, collect, markdown_table, plot_metric_vs_budget, write_aggregate
from wsisum.evaluate.results import COLUMNS, RunLabel, find_metrics, read_metrics, rows_for_fold, write_metrics
from wsisum.lit.classifier import SlideMetrics, load_mil_checkpoint, slide_metrics

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")  # lightning 2.6 on torch 2.13
FAST = ["threads=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


# --- metrics against scikit-learn ---------------------------------------------------------------
def _sk(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    present = np.unique(y)
    if len(present) < 2:
        auroc = float("nan")
    elif probs.shape[1] == 2:
        auroc = roc_auc_score(y, probs[:, 1])
    elif len(present) == probs.shape[1]:
        auroc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    else:  # sklearn refuses absent classes in ovr: the macro mean of the present classes' binary AUROCs
        auroc = float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
    pred = probs.argmax(1)
    with warnings.catch_warnings():  # sklearn warns when a predicted class is absent from y
        warnings.simplefilter("ignore")
        bacc = balanced_accuracy_score(y, pred)
    return {"auroc": auroc, "balanced_accuracy": bacc, "f1_macro": f1_score(y, pred, average="macro")}


def _check_against_sklearn(probs: np.ndarray, y: np.ndarray) -> None:
    got = slide_metrics(torch.from_numpy(probs), torch.from_numpy(y), probs.shape[1])
    want = _sk(probs, y)
    for name, value in want.items():
        g = float(got[name])
        assert (math.isnan(g) and math.isnan(value)) or g == pytest.approx(value, abs=1e-6), name
    assert float(got["accuracy"]) == pytest.approx(float((probs.argmax(1) == y).mean()))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n_classes", [2, 4, 7])
def test_metrics_match_sklearn_on_fixed_predictions(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    y = np.arange(60) % n_classes
    logits = rng.normal(size=(60, n_classes)) + 1.5 * np.eye(n_classes)[y] * rng.uniform(0, 1, size=(60, 1))
    _check_against_sklearn(_softmax(logits), y)


def test_metrics_with_a_class_absent_from_the_test_set() -> None:
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1, 1, 3, 3, 3, 0, 1, 3])  # class 2 absent (but predicted sometimes)
    logits = rng.normal(size=(10, 4))
    logits[[1, 4], 2] += 10  # ... and predicted for two slides
    probs = _softmax(logits)
    assert (probs.argmax(1) == 2).sum() >= 2
    _check_against_sklearn(probs, y)


def test_auroc_is_undefined_with_one_class() -> None:
    got = slide_metrics(torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 1]), 2)
    assert math.isnan(float(got["auroc"])) and float(got["balanced_accuracy"]) == 0.5


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(2, 5),
    seed=st.integers(0, 10_000),
    n=st.integers(4, 40),
)
def test_metrics_match_sklearn_property(n_classes: int, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    probs = _softmax(rng.normal(size=(n, n_classes)) * 3)
    probs[:, 0] = np.round(probs[:, 0], 2)  # ties in scores must be handled like sklearn does
    probs = probs / probs.sum(1, keepdims=True)
    _check_against_sklearn(probs.astype(np.float32), y)


def test_slide_metrics_accumulate_over_batches() -> None:
    rng = np.random.default_rng(1)
    probs, y = _softmax(rng.normal(size=(30, 3))), rng.integers(0, 3, 30)
    m = SlideMetrics(3)
    for i in range(0, 30, 7):
        m.update(torch.from_numpy(probs[i : i + 7]), torch.from_numpy(y[i : i + 7]))
    batched = m.compute()
    once = slide_metrics(torch.from_numpy(probs), torch.from_numpy(y), 3)
    for k in once:
        assert float(batched[k]) == pytest.approx(float(once[k]))


# --- tasks ----------------------------------------------------------------------------------------
def test_task_defaults_come_from_its_name(tmp_path: Path) -> None:
    t = TaskSpec.from_config({"classes": ["a", "b"]}, tmp_path, default_name="mine")
    assert t.name == "mine" and t.labels == tmp_path / "labels/mine.csv" and t.splits_dir == tmp_path / "splits/mine"
    assert (t.monitor, t.monitor_mode, t.classes) == ("val/loss", "min", ("a", "b"))
    t = TaskSpec.from_config({"name": "x", "labels": "/abs/l.csv", "splits": "s/x"}, tmp_path)
    assert t.labels == Path("/abs/l.csv") and t.splits_dir == tmp_path / "s/x" and t.classes is None
    with pytest.raises(InputError, match="unknown key"):
        TaskSpec.from_config({"name": "x", "labell": "typo.csv"}, tmp_path)
    with pytest.raises(InputError, match="monitor_mode"):
        TaskSpec.from_config({"name": "x", "monitor_mode": "up"}, tmp_path)
    with pytest.raises(InputError, match="metric must be one of"):
        TaskSpec.from_config({"name": "x", "metric": "auc"}, tmp_path)
    assert TaskSpec.from_config({"name": "x", "metric": "f1_macro"}, tmp_path).metric == "f1_macro"


def test_mil_labels_follow_the_registry_names() -> None:
    from wsisum.evaluate.setup import mil_name_of

    assert mil_name_of("wsisum.models.mil.CLAMSB") == "clam_sb" and mil_name_of("wsisum.models.mil.ABMIL") == "abmil"
    assert mil_name_of("my_lab.models.GraphMIL") == "graphmil"


def test_task_configs_match_the_synthetic_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    """The syn_* task configs point at the labels/splits the generator writes, with its class names:
    the demo's tasks in a `tiny` cohort, the worlds' tasks in a `worlds_tiny` one."""
    import json

    from omegaconf import OmegaConf

    from wsisum.data.synthetic import generate_cohort
    from wsisum.data.synthetic.preset import load_preset

    worlds = tmp_path / "worlds"
    generate_cohort(worlds, load_preset("worlds_tiny"), seed=0, progress=False)
    cohorts = {c: json.loads((c / "cohort.json").read_text()) for c in (tiny_cohort, worlds)}
    for cfg_file in sorted((REPO / "configs" / "task").glob("syn_*.yaml")):
        datasets = set(OmegaConf.load(cfg_file).datasets)
        root, manifest = next((c, m) for c, m in cohorts.items() if datasets <= set(m["dataset_tasks"]))
        t = TaskSpec.from_config(OmegaConf.to_container(OmegaConf.load(cfg_file)), root)
        assert t.labels.is_file() and t.splits_dir.is_dir(), cfg_file.name
        kind = t.labels.stem
        assert list(t.classes) == manifest["tasks"][kind], cfg_file.name
        assert set(t.datasets) == {d for d, k in manifest["dataset_tasks"].items() if k == kind}


# --- results and aggregation ------------------------------------------------------------------
def _rows(task="t", sampler="random", budget=16, mil="abmil", values=None):
    rows = []
    for fold, v in enumerate(values or [0.8, 0.9, 1.0]):
        rows += rows_for_fold(RunLabel(task, sampler, budget, mil), fold, {"test_auroc": v, "epoch_time_s": 2.0 + fold})
    return rows


def test_metrics_csv_is_tidy_and_round_trips(tmp_path: Path) -> None:
    path = write_metrics(tmp_path / "metrics.csv", _rows(budget=None) + _rows(budget=64))
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    df = read_metrics(path)
    assert len(df) == 12 and df["budget"].isna().sum() == 6 and set(df["budget"].dropna()) == {64}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="missing column"):
        read_metrics(tmp_path / "bad.csv")


def test_find_metrics_ignores_lightning_csv_logs(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run" / "metrics.csv", _rows())
    (tmp_path / "run" / "csv" / "fold_0").mkdir(parents=True)
    (tmp_path / "run" / "csv" / "fold_0" / "metrics.csv").write_text("epoch,step,train/loss\n0,1,0.5\n")
    assert find_metrics([tmp_path]) == [tmp_path / "run" / "metrics.csv"]


def test_aggregate_mean_std_over_folds_and_markdown(tmp_path: Path) -> None:
    write_metrics(tmp_path / "a" / "metrics.csv", _rows(sampler="full", budget=None, values=[0.9, 0.95, 1.0]))
    write_metrics(tmp_path / "b" / "metrics.csv", _rows(budget=16, values=[0.7, 0.8, 0.9]))
    agg = aggregate(collect([tmp_path]))
    r = agg[(agg.sampler == "random") & (agg.metric == "test_auroc")].iloc[0]
    assert r["mean"] == pytest.approx(0.8) and r["std"] == pytest.approx(0.1) and r["n"] == 3
    md = markdown_table(agg)
    assert "| t | abmil | full |  | 3 | 0.950 ± 0.050 |" in md
    assert "| t | abmil | random | 16 | 3 | 0.800 ± 0.100 |" in md
    assert md.index("| full |") < md.index("| random |")
    assert "1.0×" in md  # same epoch times: ratio full/this = 1


def test_plot_has_one_line_per_sampler_and_the_full_reference(tmp_path: Path) -> None:
    rows = _rows(sampler="full", budget=None)
    for sampler in ("random", "kmeans"):
        for budget in (16, 64):
            rows += _rows(sampler=sampler, budget=budget)
    agg = aggregate(pd.DataFrame(rows).astype({"budget": "Int64"}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        ax = fig.axes[0]
        captured["labels"] = sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_"))
        captured["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        (path,) = plot_metric_vs_budget(agg, tmp_path)
    finally:
        plt.Figure.savefig = real_savefig
    assert path.name == "auroc_vs_budget_abmil.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(t.startswith("full bags") for t in captured["legend"])
    assert {"random", "kmeans"} <= set(captured["legend"])


def test_aggregate_cli(tmp_path: Path) -> None:
    write_metrics(tmp_path / "sweep" / "0" / "metrics.csv", _rows(budget=16))
    write_metrics(tmp_path / "full" / "metrics.csv", _rows(sampler="full", budget=None))
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsisum.evaluate.aggregate",
            str(tmp_path / "sweep"),
            str(tmp_path / "full"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "aggregate.csv").is_file() and (out / "auroc_vs_budget_abmil.png").is_file()
    assert "| random | 16 |" in r.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "wsisum.evaluate.aggregate", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert empty.returncode == 1 and empty.stderr.startswith("error: ") and "Traceback" not in empty.stderr


# --- summary bags: sampler and budget labels -------------------------------------------------------
def write_summaries(root: Path, out: Path, task_csv: str, budget: int, sampler: str = "random", seed: int = 0) -> Path:
    """Random `budget`-patch summaries of every labelled slide, with the attrs wsisum-summarize writes."""
    labels = pd.read_csv(root / "labels" / task_csv)
    rng = np.random.default_rng(seed)
    for h5 in sorted((root / "h5_files").glob("*/*.h5")):
        if h5.stem not in set(labels["slide_id"]):
            continue
        bag = read_bag(h5)
        idx = np.sort(rng.choice(bag.n_patches, size=min(budget, bag.n_patches), replace=False))
        write_bag(
            out / h5.parent.name / h5.name,
            bag.features[idx],
            bag.coords[idx],
            attrs={"sampler": sampler, "budget": budget, "source": str(h5), "seed": seed},
            extras={"indices": idx.astype(np.int64)},
        )
    return out


# --- the app ------------------------------------------------------------------------------------
def _run_in_process(tmp_path: Path, overrides: list[str]):
    from wsisum.evaluate.runner import run_evaluation

    cfg = compose_config("evaluate", [*FAST, *overrides], tmp_path / "run")
    return run_evaluation(cfg)


def test_abmil_on_full_bags_learns_the_subtype_task(tiny_cohort: Path, tmp_path: Path) -> None:
    """The must-show: ABMIL, full bags, tiny cohort, subtype task, every fold: AUROC well above chance (0.5).

    (Fold 2's val set has 4 slides, 3 of one class: selection by val loss can stop at an early epoch there,
    which is why the bar is on the mean and on 2 of 3 folds.)
    """
    res = _run_in_process(
        tmp_path,
        [f"data.root={tiny_cohort}", "task=syn_brca", "mil=abmil", "trainer.max_epochs=12", "classifier.lr=1e-3"],
    )
    aurocs = [r["value"] for r in res.rows if r["metric"] == "test_auroc"]
    assert len(aurocs) == 3 and res.mean("test_auroc") >= 0.8 and sorted(aurocs)[1] >= 0.9, aurocs
    df = read_metrics(tmp_path / "run" / "metrics.csv")
    assert list(df.columns) == list(COLUMNS) and set(df["task"]) == {"syn_brca"} and set(df["sampler"]) == {"full"}
    assert df["budget"].isna().all() and set(df["mil"]) == {"abmil"} and set(df["fold"]) == {0, 1, 2}
    by = df.set_index(["fold", "metric"])["value"]
    for fold in (0, 1, 2):
        assert by[(fold, "epoch_time_s")] > 0 and by[(fold, "peak_rss_mb")] > 50
        assert 60 <= by[(fold, "patches_per_bag")] <= 300 and by[(fold, "epochs")] >= 1
        assert 0 <= by[(fold, "best_epoch")] < by[(fold, "epochs")]
    pred = pd.read_csv(tmp_path / "run" / "predictions" / "fold_0.csv")
    assert list(pred.columns) == ["slide_id", "target", "prediction", "prob_IDC", "prob_ILC"]
    assert np.allclose(pred[["prob_IDC", "prob_ILC"]].sum(axis=1), 1, atol=1e-4)
    assert by[(0, "n_test")] == len(pred)
    # the logged test AUROC is the AUROC of the written predictions
    assert roc_auc_score(pred["target"] == "ILC", pred["prob_ILC"]) == pytest.approx(by[(0, "test_auroc")], abs=1e-5)
    # the selected checkpoint rebuilds the model alone (what the attention sampler loads) and predicts the same
    (ckpt,) = (tmp_path / "run" / "checkpoints" / "fold_0").glob("best-*.ckpt")
    mil = load_mil_checkpoint(ckpt)
    assert mil.class_names == ["IDC", "ILC"] and type(mil.model).__name__ == "ABMIL"
    row = pred.iloc[0]
    (bag,) = tiny_cohort.glob(f"h5_files/*/{row['slide_id']}.h5")
    out = mil.model(torch.from_numpy(read_bag(bag).features.astype(np.float32))[None])
    assert torch.softmax(out.logits, -1)[0, 1].item() == pytest.approx(row["prob_ILC"], abs=1e-4)
    assert out.attention.shape == (1, read_bag(bag).n_patches)
    with pytest.raises(InputError, match="not a wsisum-evaluate MIL checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
        load_mil_checkpoint(tmp_path / "other.ckpt")


def test_summary_bags_are_labelled_from_their_attrs(tiny_cohort: Path, tmp_path: Path) -> None:
    summaries = write_summaries(tiny_cohort, tmp_path / "sum", "brca.csv", budget=16)
    common = [f"data.root={tiny_cohort}", "task=syn_brca", "mil=meanpool", "folds=[0]", "trainer.max_epochs=1"]
    res = _run_in_process(tmp_path, [*common, f"bags={summaries}"])
    assert (res.label.sampler, res.label.budget, res.label.mil) == ("random", 16, "meanpool")
    rows = {r["metric"]: r["value"] for r in res.rows}
    assert rows["patches_per_bag_max"] <= 16
    with pytest.raises(InputError, match="budget=64 but the bags were summarized with budget 16"):
        _run_in_process(tmp_path, [*common, f"bags={summaries}", "budget=64"])
    with pytest.raises(InputError, match="applies to summary bags only"):
        _run_in_process(tmp_path, [*common, "budget=64"])


def _app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app("evaluate", *args, *FAST, cwd=cwd)


def test_a_task_defined_only_in_a_user_config_dir(tiny_copy: Path, tmp_path: Path) -> None:
    """One YAML in the user's --config-dir is a new task; its labels and splits follow its name."""
    shutil.copy(tiny_copy / "labels" / "brca.csv", tiny_copy / "labels" / "my_subtypes.csv")
    shutil.copytree(tiny_copy / "splits" / "brca", tiny_copy / "splits" / "my_subtypes")
    user = tmp_path / "my_configs"
    (user / "task").mkdir(parents=True)
    (user / "task" / "my_subtypes.yaml").write_text("# IDC vs ILC, my way\nclasses: [ILC, IDC]\n")
    r = _app(
        "--config-dir",
        str(user),
        f"data.root={tiny_copy}",
        "task=my_subtypes",
        "mil=meanpool",
        "folds=[0]",
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    df = read_metrics(tmp_path / "run" / "metrics.csv")
    assert set(df["task"]) == {"my_subtypes"} and "test_auroc" in set(df["metric"])
    pred = pd.read_csv(tmp_path / "run" / "predictions" / "fold_0.csv")
    assert list(pred.columns)[-2:] == ["prob_ILC", "prob_IDC"]  # the user's class order
    assert (tmp_path / "run" / "aggregate.md").is_file()


def test_leaky_split_stops_the_run_with_one_line(tiny_copy: Path, tmp_path: Path) -> None:
    split = tiny_copy / "splits" / "brca" / "splits_1.csv"
    df = pd.read_csv(split, index_col=0)
    df.loc[len(df), "test"] = df["train"].dropna().iloc[0]  # a training slide also in test
    df.to_csv(split)
    r = _app(f"data.root={tiny_copy}", "task=syn_brca", "mil=meanpool", "folds=[0,1]", cwd=tmp_path)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert str(split) in lines[0] and "leaky split" in lines[0] and "train and test" in lines[0]
    assert not list((tmp_path / "outputs").rglob("best-*.ckpt"))  # checked before fold 0 trained


def test_two_job_multirun_writes_the_aggregated_table_and_plot(tiny_cohort: Path, tmp_path: Path) -> None:
    summaries = write_summaries(tiny_cohort, tmp_path / "summaries" / "random_16", "brca.csv", budget=16)
    sweep = tmp_path / "sweep"
    r = _app(
        "-m",
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "mil=meanpool",
        "folds=[0,1]",
        "trainer.max_epochs=2",
        f"bags=full,{summaries}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.parent.name for p in find_metrics([sweep])) == ["0", "1"]
    agg = pd.read_csv(sweep / "aggregate.csv")
    assert set(zip(agg["sampler"], agg["budget"].fillna(-1))) == {("full", -1), ("random", 16)}
    assert (agg[agg.metric == "test_auroc"]["n"] == 2).all()
    md = (sweep / "aggregate.md").read_text()
    assert "| syn_brca | meanpool | full |  | 2 |" in md and "| syn_brca | meanpool | random | 16 | 2 |" in md
    png = sweep / "auroc_vs_budget_meanpool.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5_000


def test_a_failed_job_does_not_stop_the_sweep_but_fails_it(tiny_cohort: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    r = _app(
        "-m",
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "mil=meanpool",
        "folds=[0]",
        "trainer.max_epochs=1",
        f"bags={tmp_path / 'no_such_summaries'},full",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert (sweep / "0" / "FAILED").is_file() and (sweep / "1" / "metrics.csv").is_file()
    assert (sweep / "aggregate.md").is_file()  # the good job is still aggregated
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert any("no_such_summaries" in e and "bag directory not found" in e for e in errors)
    assert errors[-1] == "error: 1 job(s) of the sweep failed" and "Traceback" not in r.stderr


def test_write_aggregate_refuses_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no metrics\.csv"):
        write_aggregate([tmp_path], tmp_path)


def test_a_fold_without_val_slides_selects_on_train_loss(tiny_copy: Path, tmp_path: Path) -> None:
    """Cohorts of a few slides leave val empty: the fold still trains, selects and tests (on train/loss)."""
    split = tiny_copy / "splits" / "brca" / "splits_0.csv"
    df = pd.read_csv(split, index_col=0)
    moved = df["val"].dropna().tolist()
    train = df["train"].dropna().tolist() + moved
    write_split(split, train, [], df["test"].dropna().tolist())
    result = _run_in_process(
        tmp_path, [f"data.root={tiny_copy}", "task=syn_brca", "mil=meanpool", "folds=[0]", "trainer.max_epochs=2"]
    )
    values = {r["metric"]: r["value"] for r in result.rows}
    assert values["n_val"] == 0 and values["n_train"] == len(train) and 0.0 <= values["test_auroc"] <= 1.0
    assert list((tmp_path / "run" / "checkpoints" / "fold_0").glob("best-*.ckpt"))


def test_config_instantiates_the_fold_datamodule_and_the_classifier(tiny_cohort: Path, tmp_path: Path) -> None:
    """`data` and `classifier` come from their `_target_`s: the fold's datamodule gets the data group's
    loader options and the run's bags; the classifier gets the mil model, the fold's class weights and
    a partial AdamW with the `classifier.*` values, which is no hyper-parameter of its checkpoints."""
    from wsisum.data.datamodules import ClassificationDataModule
    from wsisum.evaluate.fit import build_classifier
    from wsisum.evaluate.folds import fold_datamodule
    from wsisum.evaluate.setup import prepare_run
    from wsisum.lit.classifier import MILClassifier, balanced_class_weights
    from wsisum.models.mil import ABMIL

    overrides = [f"data.root={tiny_cohort}", "task=syn_brca", "data.batch_size=3", "seed=4", "folds=[1]"]
    cfg = compose_config("evaluate", [*overrides, "classifier.lr=1e-3", "classifier.class_weights=balanced"], tmp_path)
    task, folds = prepare_run(cfg)
    dm = fold_datamodule(cfg, task, folds[0], tmp_path)
    assert isinstance(dm, ClassificationDataModule) and (dm.fold, dm.batch_size, dm.seed, dm.bags) == (1, 3, 4, "full")
    classes = list(dm.labels.classes)
    lit = build_classifier(cfg, dm, classes)
    assert isinstance(lit, MILClassifier) and isinstance(lit.model, ABMIL) and lit.class_names == classes
    expected = balanced_class_weights(dm.parts["train"].targets, len(classes))
    assert lit.class_weights.tolist() == pytest.approx(expected) and "optimizer" not in lit.hparams
    opt = lit.make_optimizer(lit.parameters())
    assert isinstance(opt, torch.optim.AdamW) and (opt.defaults["lr"], opt.defaults["weight_decay"]) == (1e-3, 1e-4)
    weights = compose_config("evaluate", [*overrides, "classifier.class_weights=[1,2]"], tmp_path)
    assert build_classifier(weights, dm, classes).class_weights.tolist() == [1.0, 2.0]
