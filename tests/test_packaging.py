"""What an installed (non-editable) wsisum needs: its configs as package data, one version, and a user's
own config dir on top of the packaged groups. `scripts/check_wheel.sh` (CI) installs a built wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

import wsisum
from tests.apps import run_app
from wsisum.__main__ import COMMANDS
from wsisum.apps._app import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_configs_are_package_data_and_the_top_level_configs_is_a_link_to_them() -> None:
    package = REPO / "wsisum" / "configs"
    assert Path(CONFIG_DIR) == package and package.is_dir() and not package.is_symlink()
    assert (REPO / "configs").is_symlink() and (REPO / "configs").resolve() == package
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files and all(p.suffix == ".yaml" for p in files)  # every config matches the package-data glob
    assert "configs/**/*.yaml" in pyproject()["tool"]["setuptools"]["package-data"]["wsisum"]


def test_version_is_one_number() -> None:
    """`wsisum --version` and `python -m wsisum --version` print the package's version, which is the
    one the wheel is built with (pyproject reads it from `wsisum.version.__version__`)."""
    project = pyproject()
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "wsisum.version.__version__"}
    r = subprocess.run([sys.executable, "-m", "wsisum", "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == f"wsisum {wsisum.__version__}"
    script = Path(sys.executable).parent / "wsisum"
    if script.exists():
        r = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
        assert r.stdout.strip() == f"wsisum {wsisum.__version__}"


def test_the_command_list_names_every_console_script() -> None:
    assert set(COMMANDS) | {"wsisum"} == set(pyproject()["project"]["scripts"])
    r = subprocess.run([sys.executable, "-m", "wsisum"], capture_output=True, text=True, check=True)
    assert all(name in r.stdout for name in COMMANDS)


def test_a_summary_records_the_printed_version(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    selection = wsisum.summarize_slide(features, None, budget=4, sampler="random")
    path = wsisum.write_summary(tmp_path / "s.h5", features, selection, sampler="random", budget=4)
    printed = subprocess.run([sys.executable, "-m", "wsisum", "--version"], capture_output=True, text=True)
    assert f"wsisum {wsisum.read_bag(path).attrs['wsisum_version']}" == printed.stdout.strip()


def user_config_dir(root: Path) -> Path:
    """The README's "your own task": one task file in the user's own config dir."""
    user = root / "my_configs"
    (user / "task").mkdir(parents=True)
    (user / "task" / "my_task.yaml").write_text("name: my_task\nclasses: [IDC, ILC]\nmetric: auroc\n")
    return user


def test_a_user_task_composes_with_the_packaged_groups(tmp_path: Path) -> None:
    user = user_config_dir(tmp_path)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"hydra.searchpath=[file://{user}]", "task=my_task", "mil=meanpool"])
    assert cfg.task.name == "my_task" and list(cfg.task.classes) == ["IDC", "ILC"]
    assert cfg.mil._target_.startswith("wsisum.") and cfg.trainer and cfg.data.root is not None  # packaged groups


@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_the_app_takes_a_user_config_dir(tmp_path: Path, how: str) -> None:
    """As the README runs it: a relative `--config-dir my_configs` (or `hydra.searchpath`) adds the user's
    task; the packaged groups (data, mil, trainer) stay available."""
    user_config_dir(tmp_path)
    where = (
        ["--config-dir", "my_configs"]
        if how == "--config-dir"
        else [f"hydra.searchpath=[file://{tmp_path}/my_configs]"]
    )
    r = run_app(
        "evaluate", *where, "data.root=/data/brca", "task=my_task", "mil=meanpool", "--cfg", "job", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["task"]["name"] == "my_task" and cfg["task"]["classes"] == ["IDC", "ILC"]
    assert cfg["data"]["root"] == "/data/brca" and cfg["mil"]["_target_"].startswith("wsisum.")
