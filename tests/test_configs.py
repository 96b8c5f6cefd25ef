"""Every Hydra config composes, and every preset resolves to a complete generator config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wsisum.apps._app import CONFIG_DIR

PRIMARY = sorted(p.stem for p in Path(CONFIG_DIR).glob("*.yaml"))
# experiment / hparams_search are `# @package _global_` recipes applied on demand (tested below)
OPTIONAL = ("hydra", "experiment", "hparams_search", "local")
GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name not in OPTIONAL)
REQUIRED = {
    "synth": ["out_dir=/tmp/x"],
    "summarize": ["out_dir=/tmp/x", "data.root=/tmp/x"],
    "train": ["data.root=/tmp/x"],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_config_dir_is_the_repo_configs(repo_root: Path) -> None:
    assert Path(CONFIG_DIR).resolve() == (repo_root / "configs").resolve()
    assert "synth" in PRIMARY


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_configs_compose(name: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=REQUIRED.get(name, []))
    assert cfg.task_name
    OmegaConf.to_container(cfg.paths, resolve=False)


@pytest.mark.parametrize("preset", _options("preset"))
def test_every_preset_composes_and_resolves(preset: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="synth", overrides=[f"preset={preset}", "out_dir=/tmp/x"])
    plain = OmegaConf.to_container(cfg.preset, resolve=True)
    assert plain and not OmegaConf.missing_keys(cfg.preset)


def test_every_group_option_is_composable_somewhere() -> None:
    """A config file nobody can compose is dead weight: each group must belong to a primary config."""
    composed: set[str] = set()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name in PRIMARY:
            cfg = compose(config_name=name, overrides=REQUIRED.get(name, []))
            composed.update(k for k in cfg if k in GROUPS)
            composed.update(k for k in cfg.hydra.runtime.choices if k in GROUPS) if "hydra" in cfg else None
    assert set(GROUPS) <= composed, f"groups used by no primary config: {set(GROUPS) - composed}"


GROUP_OF_APP = {
    "train": ["model", "teachers", "fusion", "trainer", "logger", "data"],
    "summarize": ["sampler", "trainer", "data"],
}


@pytest.mark.parametrize(
    ("app", "group", "option"),
    [(app, g, o) for app, groups in GROUP_OF_APP.items() for g in groups for o in _options(g)],
)
def test_every_option_composes_in_its_app(app: str, group: str, option: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=app, overrides=[*REQUIRED[app], f"{group}={option}"])
    assert cfg[group] is not None


LAUNCHERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "hydra" / "launcher").glob("*.yaml"))


@pytest.mark.parametrize("app", ["summarize", "train", "evaluate"])
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_composes_and_instantiates(app: str, launcher: str, tmp_path: Path) -> None:
    """`-m hydra/launcher=NAME` works in every sweeping app; instantiating resolves its interpolations."""
    from hydra.plugins.launcher import Launcher
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(app, [*REQUIRED.get(app, []), f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == launcher
    assert isinstance(instantiate(cfg.hydra.launcher), Launcher)


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="pipeline" if (Path(CONFIG_DIR) / "pipeline.yaml").exists() else "train",
            overrides=[f"experiment={experiment}"],
        )
    assert cfg
