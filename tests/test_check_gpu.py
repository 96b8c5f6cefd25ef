"""scripts/check_gpu.py --small on the CPU: every check runs and passes there, cuda rows are SKIP with a
reason when there is no CUDA, the figures are finite and consistent, and a broken check exits 1."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_gpu.py"
CHECKS = ("kmeans", "train", "train-lightning", "summarize")


def _numbers(x: Any) -> list[float]:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, int | float):
        return [float(x)]
    if isinstance(x, dict):
        return [v for item in x.values() for v in _numbers(item)]
    if isinstance(x, list):
        return [v for item in x for v in _numbers(item)]
    raise TypeError(f"unexpected {type(x).__name__} in the JSON")


def test_small_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check_gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for check in ("env", *CHECKS):
        assert check in proc.stdout  # the rich table
    doc = json.loads(out.read_text())
    assert doc["small"] and doc["ok"]
    rows = {(r["check"], r["device"]): r for r in doc["rows"]}
    assert len(rows) == len(doc["rows"]) == 1 + 2 * len(CHECKS)

    env = rows[("env", "cuda" if torch.cuda.is_available() else "cpu")]
    assert env["status"] == "OK" and env["figures"]["torch"] == torch.__version__
    assert isinstance(env["figures"]["faiss_gpus"], int)

    for check in CHECKS:
        cpu = rows[(check, "cpu")]
        assert cpu["status"] == "OK", cpu
        assert cpu["reason"] == "" and cpu["key"] and cpu["size"]
        assert cpu["seconds"] is not None and 0 <= cpu["seconds"] < 60
        assert _numbers(cpu["figures"]) and all(math.isfinite(v) for v in _numbers(cpu["figures"])), cpu
        gpu = rows[(check, "cuda")]
        if not torch.cuda.is_available():
            assert gpu["status"] == "SKIP" and gpu["reason"], gpu
            assert "CUDA" in gpu["reason"] or "faiss" in gpu["reason"]
        else:
            assert gpu["status"] in ("OK", "SKIP"), gpu
    if env["figures"]["faiss_gpus"] == 0:
        assert rows[("kmeans", "cuda")]["status"] == "SKIP" and "faiss" in rows[("kmeans", "cuda")]["reason"]

    km = rows[("kmeans", "cpu")]["figures"]
    assert km["k"] == km["non_empty"] == 50
    assert 0.5 * 64 < km["inertia_per_point"] < 4 * 64  # unit-variance blobs in 64 dims: ~64 per point

    tr = rows[("train", "cpu")]["figures"]
    assert tr["linear_dtype"] == "bfloat16"  # autocast really ran the Linear layers in bf16
    assert len(tr["losses"]) == tr["steps"] + 1 and tr["samples_per_s"] > 0 and tr["peak_mb"] > 0
    assert tr["loss_decreasing"] == (tr["loss_last"] < tr["loss_first"])

    lt = rows[("train-lightning", "cpu")]["figures"]
    assert lt["global_step"] == 2 and lt["param_dtypes"] == ["float32"] and lt["linear_dtype"] == "bfloat16"
    assert lt["param_device"] == "cpu"

    sm = rows[("summarize", "cpu")]["figures"]
    assert sm["slides"] == 2 and len(sm["scores"]) == 2 and sm["s_per_slide"] > 0
    # score = teacher_weight x teacher cosine + coverage, each in [-1, 1]; at most 2 with both weights 1
    assert all(-1 <= s <= 2 for s in sm["scores"]) and min(sm["n_scored"]) > 1  # a real search, not one mask
    assert sm["repeat_overlap"] == 1.0 and sm["repeat_score_diff"] == 0.0  # CPU vs CPU: the same summary


def test_a_broken_check_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("check_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_gpu", mod)  # its dataclasses look their module up while defined
    spec.loader.exec_module(mod)

    def broken(*_: Any) -> None:
        raise RuntimeError("planted\nsecond line")

    monkeypatch.setattr(mod, "check_kmeans_cpu", broken)
    out = tmp_path / "rows.json"
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        assert mod.main(["--small", "--only", "kmeans", "--json", str(out)]) == 1
    finally:  # main() quiets Lightning's loggers: leave them as the other tests expect them
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    doc = json.loads(out.read_text())
    rows = {(r["check"], r["device"]): r for r in doc["rows"]}
    assert not doc["ok"] and sorted(r["check"] for r in doc["rows"]) == ["env", "kmeans", "kmeans"]
    assert rows[("kmeans", "cpu")]["status"] == "FAIL"
    assert rows[("kmeans", "cpu")]["reason"] == "RuntimeError: planted"  # one line
    assert rows[("kmeans", "cuda")]["status"] in ("OK", "SKIP")  # the other rows still ran
