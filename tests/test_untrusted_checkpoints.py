"""A checkpoint is untrusted input: a crafted one is refused in one line and runs nothing.

The payload is a pickle whose `__reduce__` creates a file, saved the way `torch.save` saves a real
checkpoint; the control test shows that a full unpickle really runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose_config, make_cohort
from wsisum.checkpoints import REFUSED, load_checkpoint
from wsisum.errors import InputError


class Payload:
    """Unpickling this creates `marker`: what a malicious shared checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def crafted(path: Path, marker: Path) -> Path:
    """A file shaped like a wsisum-train checkpoint, with the payload among its entries."""
    hp = {"feature_dim": 8, "teacher_dims": {"TITAN": 12, "PRISM": 20}}
    torch.save({"hyper_parameters": hp, "state_dict": {}, "epoch": 0, "extra": Payload(marker)}, path)
    return path


def _run(app: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", f"wsisum.apps.{app}", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env, check=False)


def test_the_payload_is_live_under_a_full_unpickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.load(crafted(tmp_path / "x.ckpt", marker), weights_only=False)
    assert marker.exists()  # so the refusals below prove something


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("untrusted") / "cohort"
    make_cohort(root, {"dsA": [6] * 4})
    return root


@pytest.mark.parametrize(
    ("app", "args"),
    [
        ("summarize", ["sampler=wsisum_search", "sampler.teacher_weight=1.0", "sampler.ckpt_path={ckpt}"]),
        ("summarize", ["sampler=attention", "sampler.ckpt_path={ckpt}"]),
        ("train", ["ckpt_path={ckpt}", "model=tiny", "pool.size=6", "pool.n_clusters=2", "trainer.accelerator=cpu"]),
    ],
    ids=["summarize-wsisum", "summarize-attention", "train-resume"],
)
def test_a_crafted_checkpoint_is_refused_in_one_line(cohort: Path, tmp_path: Path, app: str, args: list[str]) -> None:
    marker = tmp_path / "pwned"
    ckpt = crafted(tmp_path / "shared.ckpt", marker)
    extra = [f"out_dir={tmp_path / 'out'}", "progress=false"] if app == "summarize" else []
    run_dir = tmp_path / "run"
    cmd = [f"data.root={cohort}", *(a.format(ckpt=ckpt) for a in args), *extra, f"hydra.run.dir={run_dir}"]
    r = _run(app, *cmd, cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and lines == [f"error: {ckpt}: {REFUSED}"], r.stderr[-3000:]
    assert not marker.exists()
    assert not list(tmp_path.rglob("*.h5"))  # nothing was summarized either


def test_evaluate_reads_its_fold_checkpoints_through_the_safe_loader(cohort: Path, tmp_path: Path) -> None:
    """wsisum-evaluate reads only checkpoints it wrote (the best epoch, via `trainer.test(ckpt_path=)`),
    so the crafted file goes to the Trainers it builds."""
    from wsisum.evaluate.results import RunLabel
    from wsisum.evaluate.trainers import build_trainer, single_device_trainer
    from wsisum.lit.checkpoint_io import SafeCheckpointIO

    marker = tmp_path / "pwned"
    ckpt = crafted(tmp_path / "best-epoch000.ckpt", marker)
    cfg = compose_config("evaluate", [f"data.root={cohort}", "trainer.accelerator=cpu", "logger=csv"], tmp_path)
    trainer = build_trainer(cfg, 0, RunLabel("task", "full", None, "abmil"), tmp_path)
    for t in (trainer, single_device_trainer(cfg, trainer, tmp_path)):
        assert isinstance(t.strategy.checkpoint_io, SafeCheckpointIO)
        with pytest.raises(InputError) as err:
            t.strategy.load_checkpoint(ckpt)
        assert str(err.value) == f"{ckpt}: {REFUSED}"
    assert not marker.exists()


def test_real_checkpoints_need_no_extra_safe_types(cohort: Path, tmp_path: Path) -> None:
    """A wsisum-train checkpoint of the less common recipe (pca fusion, budget-aware sizes) loads
    weights-only: its hyper-parameters are plain values, so nothing needs registering."""
    from wsisum.apps.train import train

    overrides = [f"data.root={cohort}", "model=tiny", "pool.size=6", "pool.n_clusters=2", "trainer.accelerator=cpu"]
    overrides += ["trainer.max_epochs=1", "fusion=pca", "lit.visible_sizes=[2,4]", f"pool.cache_dir={tmp_path}/c"]
    train(compose_config("train", overrides, tmp_path))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["fusion_mode"] == "pca" and ckpt["hyper_parameters"]["visible_sizes"] == [2, 4]
    assert ckpt["state_dict"] and ckpt["optimizer_states"]


def test_a_foreign_or_broken_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(InputError, match=REFUSED):
        load_checkpoint(tmp_path / "list.ckpt")
    whole = crafted(tmp_path / "x.ckpt", tmp_path / "pwned").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"unreadable checkpoint \(truncated or corrupt\?\)"):
        load_checkpoint(tmp_path / "cut.ckpt")
    assert not (tmp_path / "pwned").exists()
