"""wsisum-evaluate's config groups: every option composes in the app; launchers, Optuna search, DDP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.apps import run_app
from tests.conftest import compose_config
from wsisum.apps._app import CONFIG_DIR
from wsisum.data.tasks import TaskSpec

GROUPS = ["mil", "task", "trainer", "logger", "callbacks", "hparams_search", "data"]
FAST = ["threads=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def _compose(overrides: list[str], hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides, return_hydra_config=hydra_cfg)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_in_evaluate(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("evaluate", [f"{group}={option}", "data.root=/tmp/x"], tmp_path)
    assert cfg.task_name == "evaluate"
    OmegaConf.update(cfg, "fold", 0)  # callbacks and loggers interpolate the current fold
    for node in ("callbacks", "logger", "trainer", "mil", "task"):
        OmegaConf.to_container(cfg[node], resolve=True)


def test_the_study_tasks_exist_with_their_classes() -> None:
    want = {
        "camelyon17": ["negative", "macro", "micro", "itc"],
        "bracs": ["N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC"],
        "brca_subtyping": ["IDC", "ILC"],
        "luad": None,
    }
    for name, classes in want.items():
        cfg = _compose([f"task={name}", "data.root=/data/study"])
        t = TaskSpec.from_config(OmegaConf.to_container(cfg.task, resolve=True), cfg.data.root)
        assert t.name == name and t.labels == Path(f"/data/study/labels/{name}.csv")
        assert t.splits_dir == Path(f"/data/study/splits/{name}")
        assert (list(t.classes) if t.classes else None) == classes


def test_callbacks_monitor_the_task_choice(tmp_path: Path) -> None:
    cfg = compose_config("evaluate", ["task=syn_bracs"], tmp_path)
    OmegaConf.update(cfg, "fold", 3)
    cb = OmegaConf.to_container(cfg.callbacks, resolve=True)
    assert cb["model_checkpoint"]["monitor"] == "val/loss" and cb["model_checkpoint"]["mode"] == "min"
    assert cb["model_checkpoint"]["dirpath"].endswith("checkpoints/fold_3")
    assert cb["early_stopping"]["monitor"] == "val/loss" and cb["early_stopping"]["check_finite"] is False


def test_optuna_search_optimises_validation_not_test() -> None:
    cfg = _compose(["hparams_search=abmil_optuna"], hydra_cfg=True)
    assert cfg.optimized_metric.startswith("val_")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert {"classifier.lr", "mil.hidden_dim", "mil.dropout"} <= set(sweeper.params)
    assert cfg.hydra.callbacks.aggregate.enabled is False
    assert cfg.mil._target_.endswith("ABMIL")


@pytest.mark.parametrize(("launcher", "target"), [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs(launcher: str, target: str) -> None:
    cfg = _compose([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.callbacks.aggregate._target_.endswith("AggregateMetrics")


def _app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app("evaluate", *args, *FAST, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_optuna_search_runs_trials(tiny_cohort: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "opt"
    r = _app(
        "hparams_search=abmil_optuna",
        "hydra.sweeper.n_trials=2",
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "folds=[0]",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert 0.0 <= float(results.best_value) <= 1.0 and "classifier.lr" in results.best_params
    assert not (sweep / "aggregate.md").exists()


@pytest.mark.slow
def test_ddp_sim_trains_on_two_processes_and_tests_every_slide_once(tiny_cohort: Path, tmp_path: Path) -> None:
    import pandas as pd

    r = _app(
        "trainer=ddp_sim",
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "mil=abmil",
        "folds=[0]",
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pred = pd.read_csv(tmp_path / "run" / "predictions" / "fold_0.csv")
    split = pd.read_csv(tiny_cohort / "splits" / "brca" / "splits_0.csv")
    assert sorted(pred["slide_id"]) == sorted(split["test"].dropna())  # no DistributedSampler padding
    m = pd.read_csv(tmp_path / "run" / "metrics.csv").set_index("metric")["value"]
    assert m["n_test"] == len(pred) and m["epoch_time_s"] > 0
