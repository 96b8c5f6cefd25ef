"""wsisum-train: fast runs for each fusion, losses fall, resume, DDP on CPU, W&B offline, real slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_config, make_cohort
from wsisum.apps.train import train
from wsisum.data.datamodules import PretrainDataModule
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.sampling.pool import PoolTransform

FAST = ["model=tiny", "pool.size=24", "pool.n_clusters=4", "trainer.accelerator=cpu", "logger=csv"]


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [40, 90, 30, 120, 70, 45, 80, 60], "dsB": [100, 25, 60, 110]}, dim=16)
    return root


def _cfg(root: Path, out: Path, *extra: str):
    return compose_config(
        "train", [f"data.root={root}", f"pool.cache_dir={out}/cache", "val_fraction=0.25", *FAST, *extra], out
    )


@pytest.mark.parametrize("fusion", ["pca", "heads"])
def test_fast_dev_run_each_fusion(tmp_path: Path, cohort: Path, fusion: str) -> None:
    out = tmp_path / "run"
    train(_cfg(cohort, out, f"fusion={fusion}", "+trainer.fast_dev_run=true"))
    assert (out / "teacher_fusion.npz").is_file()


def test_config_instantiates_the_datamodule_and_the_module(tmp_path: Path, cohort: Path) -> None:
    """`data` and `lit` come from their `_target_`s with the user-facing keys (pool.*, lit.*,
    val_fraction, model=...); the optimiser is a partial the module calls, the same AdamW as the
    module's default, and no hyper-parameter (a checkpoint keeps plain values only)."""
    from hydra.utils import instantiate

    cfg = _cfg(cohort, tmp_path / "run", "pool.size=17", "lit.lr=3e-3", "lit.betas=[0.8,0.9]", "lit.mask_ratio=0.5")
    dm = instantiate(cfg.data)
    assert isinstance(dm, PretrainDataModule) and isinstance(dm.transform, PoolTransform)
    assert dm.transform.pool_size == 17 and dm.val_fraction == 0.25 and dm.root == cohort
    module = instantiate(cfg.lit)(feature_dim=16, teacher_dims={"TITAN": 8, "CHIEF": 4}, fused_dim=None)
    hp = dict(module.hparams)
    assert "optimizer" not in hp and hp["model"]["embed_dim"] == 32 and hp["mask_ratio"] == 0.5
    assert hp["fusion_mode"] == "heads" and isinstance(hp["betas"], list) and isinstance(hp["model"], dict)
    opt = module.make_optimizer(module.parameters())
    default = SummarizerPretraining(**hp).make_optimizer(module.parameters())
    assert type(opt) is type(default) is torch.optim.AdamW
    assert (
        opt.defaults == default.defaults and opt.defaults["lr"] == 3e-3 and tuple(opt.defaults["betas"]) == (0.8, 0.9)
    )
    swapped = _cfg(cohort, tmp_path / "run", "lit.optimizer._target_=torch.optim.Adam")
    module = instantiate(swapped.lit)(feature_dim=16, teacher_dims={"TITAN": 8}, fused_dim=None)
    assert type(module.make_optimizer(module.parameters())) is torch.optim.Adam


def _epoch_means(out: Path) -> list[dict[str, float]]:
    import pandas as pd

    df = pd.read_csv(out / "csv" / "metrics.csv")
    return df.groupby("epoch").mean(numeric_only=True).to_dict("records")


def test_losses_fall_and_resume_continues(tmp_path: Path, cohort: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(cohort, out, "trainer.max_epochs=6", "lit.lr=3e-3", "lit.warmup_ratio=0.0", "data.batch_size=4")
    metrics = train(cfg)
    epochs = _epoch_means(out)
    first, last = epochs[0], epochs[-1]
    assert last["train/loss_rec_epoch"] < 0.9 * first["train/loss_rec_epoch"]
    assert last["train/loss_distill_epoch"] < 0.9 * first["train/loss_distill_epoch"]
    assert "val/teacher_cos" in metrics
    last_ckpt = out / "checkpoints" / "last.ckpt"
    assert last_ckpt.is_file() and list((out / "checkpoints").glob("best-*.ckpt"))
    step = torch.load(last_ckpt, map_location="cpu", weights_only=False)["global_step"]
    out2 = tmp_path / "resumed"
    train(_cfg(cohort, out2, "trainer.max_epochs=8", "data.batch_size=4", f"ckpt_path={last_ckpt}"))
    resumed = torch.load(out2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] > step and resumed["epoch"] == 7
    module = SummarizerPretraining.load_from_checkpoint(out2 / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.mean_TITAN.abs().sum() > 0  # fitted teacher statistics travel in the checkpoint


def test_slide_missing_a_teacher_trains(tmp_path: Path, cohort: Path) -> None:
    for p in (cohort / "slide_embeddings" / "dsA" / "PRISM").glob("dsA-00[0-2].h5"):
        p.unlink()
    metrics = train(_cfg(cohort, tmp_path / "run", "+trainer.fast_dev_run=2", "fusion=pca", "data.batch_size=4"))
    # the slides without PRISM still train and distil from the teachers they have: finite losses
    assert {"train/loss_distill", "val/teacher_cos"} <= set(metrics)
    assert all(np.isfinite(float(v)) for v in metrics.values()) and metrics["bad_inputs"] == 0, metrics


@pytest.mark.timeout(240)  # the failure this guards against is a hang
def test_ddp_sim_runs_with_teachers_missing_on_one_rank(tmp_path: Path, cohort: Path) -> None:
    """Half the slides lack PRISM: a rank whose batch has no PRISM target must still reduce that head's
    gradient, or DDP waits forever."""
    for p in sorted((cohort / "slide_embeddings" / "dsA" / "PRISM").glob("*.h5"))[::2]:
        p.unlink()
    out = tmp_path / "run"
    train(_cfg(cohort, out, "trainer=ddp_sim", "trainer.max_epochs=2", "data.batch_size=1", "fusion=heads"))
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_wandb_offline_writes_run(tmp_path: Path, cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(_cfg(cohort, out, "logger=wandb", "trainer.max_epochs=2"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (record,) = runs[0].glob("run-*.wandb")  # the offline log `wandb sync` uploads (protobuf records)
    data = record.read_bytes()
    for key in (b"train/loss_epoch", b"val/teacher_cos", b"val/loss_rec", b"lr-AdamW"):
        assert key in data, key


def test_real_slide_training_step(tmp_path: Path, real_data: Path) -> None:
    # one real slide with its three real teachers (768/768/1280); fusion needs 2 training slides, so
    # the slide is trained twice under two ids through a copy of the cohort
    import shutil

    root = tmp_path / "real"
    shutil.copytree(real_data / "wsisum_demo", root, ignore=shutil.ignore_patterns("reference_format"))
    for sub in ["h5_files/tcga_brca"] + [f"slide_embeddings/tcga_brca/{t}" for t in ("TITAN", "CHIEF", "PRISM")]:
        shutil.copy(root / sub / "TCGA-3C-AALI-01.h5", root / sub / "TCGA-3C-AALI-02.h5")
    out = tmp_path / "run"
    cfg = _cfg(
        root, out, "val_fraction=0.0", "+trainer.fast_dev_run=1", "fusion=pca", "pool.size=200", "data.batch_size=2"
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    with np.load(out / "teacher_fusion.npz") as z:
        assert z["pca_components"].shape == (2, 768 + 768 + 1280)  # 2 training slides -> 2 components
        assert [str(t) for t in z["teachers"]] == ["CHIEF", "PRISM", "TITAN"]
