"""Clusters: trainer=ddp under SLURM, the SLURM sweep launchers, and real multiruns through submitit's local executor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import compose_config
from wsisum.data.bags import read_bag

BIN = Path(sys.executable).parent  # the console scripts sit beside the venv's interpreter


def _clear_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    # Lightning's SLURMEnvironment writes MASTER_ADDR/MASTER_PORT into os.environ; left behind, every
    # later DDP run in this pytest process (and its subprocesses) would wait for node gpu07 forever
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def _sbatch_script(launcher_cfg, folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sbatch script submitit would submit for this launcher config (the launcher's own parameter mapping)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake_bin = folder / "bin"  # submitit's SLURM executor refuses to start where `srun` is not on PATH
    fake_bin.mkdir(parents=True)
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = instantiate(launcher_cfg).params  # resolved, as SlurmLauncher.launch gets them
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder / "submitit")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in base else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")


def _sbatch_flag(script: str, flag: str) -> str:
    found = re.search(rf"^#SBATCH --{flag}=(\S+)$", script, re.M)
    assert found, f"no --{flag} in\n{script}"
    return found.group(1)


def _validate_launch(trainer) -> None:
    launcher = trainer.strategy.launcher
    launcher.cluster_environment.validate_settings(num_devices=launcher.num_processes, num_nodes=launcher.num_nodes)


def test_ddp_trainer_outside_slurm_uses_every_gpu_of_one_node(tmp_path: Path, monkeypatch) -> None:
    _clear_slurm(monkeypatch)
    cfg = compose_config("train", ["data.root=/tmp/x", "trainer=ddp"], tmp_path)
    assert cfg.trainer.strategy == "ddp"
    assert cfg.trainer.devices == -1 and cfg.trainer.num_nodes == 1


def test_slurm_ddp_job_gives_the_layout_trainer_ddp_expects(tmp_path: Path, monkeypatch) -> None:
    """slurm_ddp's sbatch script -> the env SLURM gives each task -> trainer=ddp's devices/nodes -> Lightning ranks."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    _clear_slurm(monkeypatch)
    overrides = ["data.root=/tmp/x", "trainer=ddp", "hydra/launcher=slurm_ddp", "hydra.launcher.partition=gpu"]
    overrides += ["hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4"]
    cfg = compose_config("train", overrides, tmp_path / "run")
    script = _sbatch_script(cfg.hydra.launcher, tmp_path, monkeypatch)
    nodes, per_node = int(_sbatch_flag(script, "nodes")), int(_sbatch_flag(script, "ntasks-per-node"))
    assert (nodes, per_node, _sbatch_flag(script, "gpus-per-node")) == (2, 4, "4")  # one task per GPU
    assert _sbatch_flag(script, "partition") == "gpu"
    assert re.search(r"^srun .*submitit\.core\._submit", script, re.M)  # the tasks are started by srun

    # what SLURM sets in task 6 of that job (node 1, local rank 2)
    env = {"SLURM_NNODES": nodes, "SLURM_NTASKS_PER_NODE": per_node, "SLURM_NTASKS": nodes * per_node}
    env |= {"SLURM_PROCID": 6, "SLURM_LOCALID": 2, "SLURM_NODEID": 1, "SLURM_JOB_ID": 4321}
    env |= {"SLURM_JOB_NAME": "train", "SLURM_NODELIST": "gpu[07-08]"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 2
    assert SLURMEnvironment.detect()
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)  # no GPUs here; the layout is the same
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.node_rank, trainer.local_rank) == (8, 6, 1, 2)
    assert cluster.main_address == "gpu07"
    _validate_launch(trainer)  # what Lightning checks when fit/predict starts the processes

    # devices that do not match --ntasks-per-node are refused: why trainer=ddp reads them from the job
    with pytest.raises(ValueError, match="ntasks-per-node"):
        _validate_launch(instantiate(cfg.trainer, accelerator="cpu", logger=False, devices=2))


def test_slurm_launcher_keeps_one_task_per_job(tmp_path: Path, monkeypatch) -> None:
    _clear_slurm(monkeypatch)
    cfg = compose_config("summarize", ["data.root=/x", "out_dir=/x", "hydra/launcher=slurm"], tmp_path / "run")
    script = _sbatch_script(cfg.hydra.launcher, tmp_path, monkeypatch)
    assert _sbatch_flag(script, "ntasks-per-node") == "1" and _sbatch_flag(script, "nodes") == "1"
    assert _sbatch_flag(script, "gpus-per-node") == "1" and _sbatch_flag(script, "mem") == "64GB"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(
        [str(BIN / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _job_logs(sweep: Path) -> dict[str, str]:
    """submitit's per-job stdout, keyed by job id: <sweep>/.submitit/<id>/<id>_0_log.out."""
    return {p.parent.name: p.read_text() for p in sorted((sweep / ".submitit").glob("*/*_0_log.out"))}


def _summarize_sweep(cohort: Path, out: Path, sweep: Path, cwd: Path) -> dict[str, str]:
    _run(
        "wsisum-summarize",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep}",
        f"data.root={cohort}",
        "sampler=random,kmeans",
        "budget=8",
        f"out_dir={out}/${{sampler_name}}_${{budget}}",
        "workers=0",
        "progress=false",
        cwd=cwd,
    )
    logs = _job_logs(sweep)
    assert len(logs) == 2, sorted((sweep / ".submitit").rglob("*"))
    for job in logs:
        assert (sweep / ".submitit" / job / f"{job}_0_result.pkl").is_file()
        assert (sweep / ".submitit" / job / f"{job}_0_log.err").is_file()
    return logs


def test_summarize_multirun_through_submitit_local(tiny_cohort: Path, tmp_path: Path) -> None:
    slides = sorted(p.relative_to(tiny_cohort / "h5_files") for p in (tiny_cohort / "h5_files").glob("*/*.h5"))
    out = tmp_path / "summaries"
    logs = _summarize_sweep(tiny_cohort, out, tmp_path / "sweep", tmp_path)
    for sampler in ("random", "kmeans"):
        d = out / f"{sampler}_8"
        assert sorted(p.relative_to(d) for p in d.glob("*/*.h5")) == slides
        bag = read_bag(d / slides[0])
        assert bag.n_patches == 8 and bag.attrs["sampler"] == sampler
        done = [text for text in logs.values() if f"{sampler} budget=8: {len(slides)} summarized" in text]
        assert len(done) == 1, logs  # each sampler ran in its own submitit job
    assert {p.name for p in (tmp_path / "sweep").iterdir()} >= {"0", "1", "multirun.yaml", ".submitit"}

    # resubmitting the sweep does not redo finished summaries
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")}
    logs = _summarize_sweep(tiny_cohort, out, tmp_path / "sweep2", tmp_path)
    for sampler in ("random", "kmeans"):
        assert sum(f"{sampler} budget=8: 0 summarized, {len(slides)} already done" in t for t in logs.values()) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.h5")} == stamps


def test_evaluate_multirun_through_submitit_local_aggregates(tiny_cohort: Path, tmp_path: Path) -> None:
    import pandas as pd

    sweep = tmp_path / "sweep"
    _run(
        "wsisum-evaluate",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={sweep}",
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "mil=meanpool,abmil",
        "folds=[0]",
        "trainer.max_epochs=1",
        "threads=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        cwd=tmp_path,
    )
    assert len(_job_logs(sweep)) == 2
    agg = pd.read_csv(sweep / "aggregate.csv")
    auroc = agg[agg["metric"] == "test_auroc"]
    assert sorted(auroc["mil"]) == ["abmil", "meanpool"] and (auroc["n"] == 1).all()
    assert auroc["mean"].between(0, 1).all()
    for job in ("0", "1"):
        assert (sweep / job / "metrics.csv").is_file()
