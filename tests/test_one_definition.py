"""One definition per setting: a sampler has one name (its config's, or `sampler_name`), and the pool
that pretraining draws is the pool the search summary searches (`configs/pool`)."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from tests.conftest import compose_config, make_cohort
from wsisum.api import sampler_config, sampler_names
from wsisum.data.bags import read_bag

POOL_KEYS = {"size": "pool_size", "n_clusters": "n_clusters", "allocation_power": "allocation_power"}
POOL_KEYS |= {"min_per_cluster": "min_per_cluster", "rare_quota": "rare_quota"}
TRANSFORM_KEYS = {"size": "pool_size"} | {k: k for k in POOL_KEYS if k != "size"}


@pytest.mark.parametrize("name", sampler_names())
def test_a_sampler_is_named_as_its_config(name: str) -> None:
    """`sampler=NAME` writes summaries whose `sampler` attr is NAME, in the API as in the CLI."""
    made = get_object(sampler_config(name)._target_)
    made = made if isinstance(made, type) else typing.get_type_hints(made)["return"]  # a factory: what it returns
    assert made.name == name


@pytest.mark.parametrize("overrides", [[], ["pool.n_clusters=8", "pool.size=64", "pool.rare_quota=0.0"]])
def test_pretraining_draws_the_pool_the_search_searches(overrides: list[str], tmp_path: Path) -> None:
    train = compose_config("train", ["data.root=/tmp/x", *overrides], tmp_path)
    summarize = ["data.root=/tmp/x", "out_dir=/tmp/x", "sampler=wsisum_search", *overrides]
    search = compose_config("summarize", summarize, tmp_path)
    transform = OmegaConf.to_container(train.data.transform, resolve=True)
    sampler = OmegaConf.to_container(search.sampler, resolve=True)
    for pool_key, sampler_key in POOL_KEYS.items():
        assert sampler[sampler_key] == train.pool[pool_key] == search.pool[pool_key], pool_key
        assert transform[TRANSFORM_KEYS[pool_key]] == train.pool[pool_key], pool_key
    if overrides:
        assert (sampler["n_clusters"], sampler["pool_size"], sampler["rare_quota"]) == (8, 64, 0.0)


def test_a_pipeline_pool_setting_reaches_pretraining_and_the_search(tmp_path: Path) -> None:
    """The tiny study sets its small pool once (`pool_overrides`); both stages compose with it."""
    tiny = compose_config("pipeline", ["experiment=tiny"], tmp_path)
    assert list(tiny.pool_overrides) == ["pool.size=64", "pool.n_clusters=8"]
    assert not any(o.startswith("pool.") for o in tiny.train.overrides)
    assert not any("pool_size" in o for o in tiny.summarize.overrides.wsisum_search)


def test_sampler_name_names_the_summaries(tmp_path: Path) -> None:
    """An ablation variant is a sampler of its own in summaries and metrics: `sampler_name` sets it,
    and without it the summaries carry the config's name."""
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [120, 90]}, dim=8)
    for name, extra in (("wsisum_search", []), ("wsisum-probe", ["sampler_name=wsisum-probe"])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "wsisum.apps.summarize", f"data.root={root}", "sampler=wsisum_search"]
        cmd += ["budget=8", f"out_dir={out}", "workers=0", "progress=false", "pool.size=40", "pool.rare_quota=0.1"]
        run = subprocess.run([*cmd, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert f"{name} budget=8: 2 summarized" in run.stdout
        for bag_path in sorted((out / "dsA").glob("*.h5")):
            attrs = read_bag(bag_path).attrs
            assert attrs["sampler"] == name and (attrs["pool_size_config"], attrs["rare_quota"]) == (40, 0.1)
