"""Every Hydra config composes, every option with `_target_` nodes instantiates in its app, the
defaults lists follow one convention, and every preset resolves to a complete generator config."""

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
    own = OmegaConf.load(Path(CONFIG_DIR) / group / f"{option}.yaml")  # the option's own keys reached the app
    own_keys = {k for k in own if k != "defaults"}
    assert own_keys <= set(cfg[group]), (group, option, own_keys - set(cfg[group]))
    if "_target_" in own:
        assert cfg[group]._target_ == own._target_


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
def test_every_experiment_composes_in_the_pipeline(experiment: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="pipeline", overrides=[f"experiment={experiment}"])
    assert cfg.study_name == experiment and cfg.cohort.preset


# Recipe slots (`# @package _global_` groups) live only in the app whose schema their recipes fit.
RECIPE_SLOTS = {"experiment": ["pipeline"], "hparams_search": ["evaluate"], "local": ["train"]}


def _defaults(name: str) -> list[str]:
    """The entries of a primary config's defaults list: `_self_` or the group (`optional` dropped)."""
    entries = OmegaConf.load(Path(CONFIG_DIR) / f"{name}.yaml").get("defaults", [])
    return [e if isinstance(e, str) else next(iter(e)).removeprefix("optional ") for e in entries]


@pytest.mark.parametrize("name", PRIMARY)
def test_self_follows_the_groups_and_precedes_the_recipes(name: str) -> None:
    """One convention in every primary config: the file overrides its groups; a recipe overrides the file."""
    entries = _defaults(name)
    assert entries.count("_self_") == 1, f"{name}.yaml: `_self_` must be in its defaults list once"
    at = entries.index("_self_")
    assert not set(entries[:at]) & set(RECIPE_SLOTS), f"{name}.yaml: a recipe slot before `_self_`"
    assert set(entries[at + 1 :]) <= set(RECIPE_SLOTS), f"{name}.yaml: a group after `_self_`"
    for slot in set(entries) & set(RECIPE_SLOTS):
        assert name in RECIPE_SLOTS[slot], f"{name}.yaml offers `{slot}`, whose recipes are for {RECIPE_SLOTS[slot]}"


def test_train_cannot_compose_the_pipeline_recipes() -> None:
    """`wsisum-train experiment=demo` fails in Hydra instead of merging the pipeline's keys into training."""
    from hydra.errors import ConfigCompositionException

    for slot, option in (("experiment", "demo"), ("hparams_search", "abmil_optuna")):
        fails = pytest.raises(ConfigCompositionException, match=f"Could not override '{slot}'")
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"), fails:
            compose(config_name="train", overrides=[*REQUIRED["train"], f"{slot}={option}"])


# ------------------------------------------------------------------------------------------------
# Every option of every group with `_target_` nodes instantiated (not only composed) in the app that
# uses it: each such node is built; a `_partial_` one is checked against its target's signature and
# called with the values only the data can give (RUNTIME). A GPU or optional package it needs and
# this machine lacks is a skip with its reason.
# ------------------------------------------------------------------------------------------------

USED_IN = {  # one app per group (the one that composes most of it); `data` builds a datamodule in both
    "summarize": ["sampler"],
    "train": ["model", "fusion", "trainer", "logger", "data"],
    "evaluate": ["mil", "data"],
}
CALLBACKS_OF = {"pretrain": "train", "evaluate": "evaluate"}  # callbacks options are per app
NODE_OF = {"model": "lit", "fusion": "lit", "hparams_search": "hydra.sweeper"}  # else the group's own node
RUNTIME = {  # what the data decides, given to a partial's call (feature dims, classes, teachers)
    "mil": {"in_dim": 16, "n_classes": 3},
    "lit": {"feature_dim": 16, "teacher_dims": {"TITAN": 8, "PRISM": 12}, "fused_dim": 8},
}
OPTIONAL_PACKAGE = {  # targets that need a package the project does not require
    "lightning.pytorch.loggers.wandb.WandbLogger": "wandb",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger": "tensorboard",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper": "optuna",
}
INSTANTIATED = [
    *((app, g, o) for app, groups in USED_IN.items() for g in groups for o in _options(g)),
    *((CALLBACKS_OF[o], "callbacks", o) for o in _options("callbacks")),
    *(("evaluate", "hparams_search", o) for o in _options("hparams_search")),
]


def _target_nodes(cfg, key: str) -> list[tuple[str, object]]:
    """The outermost nodes with a `_target_` under `cfg.<key>` (instantiating one builds its nested ones)."""

    def paths(value, where: str) -> list[str]:
        if isinstance(value, dict):
            if "_target_" in value:
                return [where]
            return [p for k, v in value.items() for p in paths(v, f"{where}.{k}")]
        if isinstance(value, list):
            return [p for i, v in enumerate(value) for p in paths(v, f"{where}[{i}]")]
        return []

    node = OmegaConf.select(cfg, key)
    if not OmegaConf.is_config(node):
        return []
    return [(p, OmegaConf.select(cfg, p)) for p in paths(OmegaConf.to_container(node, resolve=False), key)]


def _skip_unless_available(where: str, node) -> None:
    import importlib.util

    import torch

    package = OPTIONAL_PACKAGE.get(node._target_)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{where} needs the optional package {package}, which is not installed")
    plain = OmegaConf.to_container(node, resolve=True)
    wants_gpu = plain.get("accelerator") == "gpu" or plain.get("device") == "cuda"
    if wants_gpu and not torch.cuda.is_available():
        pytest.skip(f"{where} needs a CUDA GPU")


def _build(where: str, node, runtime: dict):
    """Instantiate one node; a partial must accept every configured key, and is called with `runtime`
    (on the meta device: the shapes are built, no weights, so even model=large takes a fraction of a second)."""
    import functools
    import inspect

    import torch
    from hydra.utils import instantiate

    obj = instantiate(node)
    if isinstance(obj, functools.partial):
        inspect.signature(obj.func).bind_partial(*obj.args, **obj.keywords)  # a key the target lacks fails
        if runtime:
            with torch.device("meta"):
                obj = obj(**runtime)
    assert obj is not None, where
    return obj


def test_every_group_with_targets_is_instantiated() -> None:
    """A group whose options have `_target_` nodes must be in the table above (teachers, task, preset
    and paths hold plain values: the composition tests above cover them)."""
    covered = {g for _, g, _ in INSTANTIATED} | {"hydra"}  # hydra/launcher: the launcher test above
    in_groups = [p.relative_to(CONFIG_DIR).parts for p in Path(CONFIG_DIR).rglob("*.yaml")]
    with_targets = {
        parts[0] for parts in in_groups if len(parts) > 1 and "_target_" in Path(CONFIG_DIR, *parts).read_text()
    }
    assert with_targets <= covered, f"groups with _target_ nodes not instantiated: {with_targets - covered}"
    assert set(CALLBACKS_OF) == set(_options("callbacks"))


@pytest.mark.parametrize(("app", "group", "option"), INSTANTIATED)
def test_every_option_instantiates_in_its_app(app: str, group: str, option: str, tmp_path: Path) -> None:
    from tests.conftest import compose_config
    from tests.test_attention_sampler import _abmil_checkpoint

    extra = []
    if (group, option) == ("sampler", "attention"):  # needs an ABMIL checkpoint, as a user gives one
        extra = [f"sampler.ckpt_path={_abmil_checkpoint(tmp_path / 'abmil.ckpt', 16)}"]
    cfg = compose_config(app, [*REQUIRED.get(app, []), f"{group}={option}", *extra], tmp_path)
    if "fold" in cfg:
        OmegaConf.update(cfg, "fold", 0)  # evaluate's callbacks and loggers name the current fold
    key = NODE_OF.get(group, group)
    targets = _target_nodes(cfg, key)
    assert targets, f"{key} has no _target_ node: take {group} out of the table above"
    for where, target in targets:
        _skip_unless_available(f"{group}={option} ({where})", target)
    for where, target in targets:
        _build(where, target, RUNTIME.get(where, {}))


@pytest.mark.parametrize("name", PRIMARY)
def test_every_target_of_every_app_instantiates(name: str, tmp_path: Path) -> None:
    """Each app as composed by default: every `_target_` node builds (the datamodule, the LightningModule
    and its optimiser as partials, checked against their targets' signatures), and its Hydra callbacks."""
    from hydra.experimental.callback import Callback

    from tests.conftest import compose_config

    cfg = compose_config(name, REQUIRED.get(name, []), tmp_path)
    if "fold" in cfg:
        OmegaConf.update(cfg, "fold", 0)
    targets = [t for key in cfg if key != "hydra" for t in _target_nodes(cfg, str(key))]
    callbacks = _target_nodes(cfg, "hydra.callbacks")
    assert callbacks, f"{name}: no Hydra callbacks (the run-dir check is in hydra/default.yaml)"
    assert all(isinstance(_build(where, node, {}), Callback) for where, node in callbacks)
    for where, target in targets:
        _skip_unless_available(f"{name}: {where}", target)
    for where, target in targets:
        _build(where, target, RUNTIME.get(where, {}))
