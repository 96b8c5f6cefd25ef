"""The GPU checks' parts that run on a CPU, in the default suite: `scripts/check_gpu.py --small` runs the
cpu rows for real and skips the cuda rows with a reason; the training checks' measurements on cpu; every
judging function catches what it must; the table plugin turns outcomes into rows and writes them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from tests.gpu.common import K, Row, sizes
from tests.gpu.kmeans_check import compare_kmeans, kmeans_problems
from tests.gpu.summarize_check import compare_summarize, summarize_problems
from tests.gpu.train_check import measure_train, measure_train_lightning, train_lightning_problems, train_problems
from wsisum.markdown import parse_pipe_table

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_gpu.py"


def numbers(x: Any) -> list[float]:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return []
    if isinstance(x, int | float):
        return [float(x)]
    if isinstance(x, dict):
        return [v for item in x.values() for v in numbers(item)]
    if isinstance(x, list):
        return [v for item in x for v in numbers(item)]
    raise TypeError(f"unexpected {type(x).__name__} in the JSON")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False)


def test_small_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check_gpu.json"
    proc = run([sys.executable, str(SCRIPT), "--small", "--out", str(out), "-p", "no:cacheprovider"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for check in ("kmeans", "train", "train-lightning", "summarize"):
        assert f"| {check} |" in proc.stdout  # the table
    doc = json.loads(out.read_text())
    assert doc["small"] and doc["ok"]
    assert doc["env"]["torch"] == torch.__version__ and isinstance(doc["env"]["faiss_gpus"], int)
    rows = {(r["check"], r["device"]): r for r in doc["rows"]}
    assert list(rows) == [(c, d) for c in ("kmeans",) for d in ("cpu", "cuda")] + [
        ("train", "cuda"),
        ("train-lightning", "cuda"),
        ("summarize", "cpu"),
        ("summarize", "cuda"),
    ]
    for row in rows.values():
        if row["device"] == "cpu" or torch.cuda.is_available():
            assert row["status"] in ("OK", "SKIP") and (row["status"] == "OK" or row["reason"]), row
        else:
            assert row["status"] == "SKIP" and "CUDA" in row["reason"] and not row["figures"], row
    for check in ("kmeans", "summarize"):
        cpu = rows[(check, "cpu")]
        assert cpu["status"] == "OK" and cpu["reason"] == "" and cpu["key"] and cpu["size"], cpu
        assert cpu["seconds"] is not None and 0 <= cpu["seconds"] < 60
        assert numbers(cpu["figures"]) and all(math.isfinite(v) for v in numbers(cpu["figures"])), cpu
    if doc["env"]["faiss_gpus"] == 0:
        assert rows[("kmeans", "cuda")]["status"] == "SKIP"
        assert "faiss" in rows[("kmeans", "cuda")]["reason"] or "CUDA" in rows[("kmeans", "cuda")]["reason"]

    km = rows[("kmeans", "cpu")]["figures"]
    assert km["k"] == km["non_empty"] == K
    assert 0.5 * 64 < km["inertia_per_point"] < 4 * 64  # unit-variance blobs in 64 dims: ~64 per point

    sm = rows[("summarize", "cpu")]["figures"]
    assert sm["slides"] == 2 and len(sm["scores"]) == 2 and sm["s_per_slide"] > 0 and sm["all_unique"]
    # score = teacher_weight x teacher cosine + coverage, each in [-1, 1]; at most 2 with both weights 1
    assert all(-1 <= s <= 2 for s in sm["scores"]) and min(sm["n_scored"]) > 1  # a real search, not one mask
    assert sm["repeat_overlap"] == 1.0 and sm["repeat_score_diff"] == 0.0  # CPU vs CPU: the same summary


def test_training_checks_on_cpu() -> None:
    sz = sizes(small=True)
    tr = measure_train(sz, "cpu")
    assert (tr.check, tr.device, tr.status) == ("train", "cpu", "OK") and tr.seconds > 0 and tr.key
    fig = tr.figures
    assert fig["linear_dtype"] == "bfloat16"  # autocast really ran the Linear layers in bf16
    assert len(fig["losses"]) == fig["steps"] + 1 and fig["samples_per_s"] > 0 and fig["peak_mb"] > 0
    assert fig["loss_decreasing"] == (fig["loss_last"] < fig["loss_first"])
    assert train_problems(fig) == []

    lt = measure_train_lightning(sz, "cpu").figures
    assert lt["global_step"] == 2 and lt["param_dtypes"] == ["float32"] and lt["linear_dtype"] == "bfloat16"
    assert lt["param_device"] == "cpu" and math.isfinite(lt["loss"])
    assert train_lightning_problems(lt) == []


def test_the_judges_catch_what_they_must() -> None:
    km = {"inertia": 100.0, "inertia_per_point": 1.0, "non_empty": K, "k": K}
    assert kmeans_problems(km) == []
    assert kmeans_problems(km | {"non_empty": K - 1}) == [f"k={K}, 1 empty clusters, inertia 100.0"]
    assert kmeans_problems(km | {"inertia": math.nan}) and kmeans_problems(km | {"k": K - 1})
    cpu = Row("kmeans", "cpu", seconds=8.0, figures=km)
    for ratio, ok in ((1.0, True), (1.029, True), (0.971, True), (1.031, False), (0.96, False)):
        gpu = Row("kmeans", "cuda", seconds=2.0, figures=km | {"inertia": 100.0 * ratio})
        assert (compare_kmeans(gpu, cpu) == []) is ok, ratio
        assert gpu.figures["speedup_vs_cpu"] == 4.0 and "x4.0 vs cpu" in gpu.key
    assert "tolerance 3%" in compare_kmeans(gpu, cpu)[0]

    losses = [2.0, 1.9, 1.8]
    assert train_problems({"losses": losses, "linear_dtype": "bfloat16"}) == []
    assert train_problems({"losses": [*losses, math.inf], "linear_dtype": "bfloat16"})
    assert train_problems({"losses": losses, "linear_dtype": "float32"}) == ["autocast gave float32, not bfloat16"]
    lt = {"global_step": 2, "loss": 1.0, "linear_dtype": "bfloat16", "param_dtypes": ["float32"]}
    assert train_lightning_problems(lt) == []
    for bad in ({"global_step": 1}, {"loss": math.nan}, {"linear_dtype": "float32"}, {"param_dtypes": ["bfloat16"]}):
        assert len(train_lightning_problems(lt | bad)) == 1, bad

    sm = {"all_unique": True, "scores": [0.5, 0.6], "repeat_overlap": 1.0}
    assert summarize_problems(sm, "cpu") == [] == summarize_problems(sm | {"repeat_overlap": 0.5}, "cuda")
    assert "not deterministic" in summarize_problems(sm | {"repeat_overlap": 0.5}, "cpu")[0]
    assert summarize_problems(sm | {"all_unique": False}, "cuda")
    assert summarize_problems(sm | {"scores": [math.nan]}, "cuda")


def test_summarize_comparison_with_cpu() -> None:
    def sels(*idx: list[int]) -> list[SimpleNamespace]:
        return [SimpleNamespace(indices=np.array(i)) for i in idx]

    base = {"repeat_overlap": 1.0}
    cpu = Row("summarize", "cpu", figures=base | {"s_per_slide": 6.0, "scores": [0.5, 0.7]})
    gpu = Row("summarize", "cuda", figures=base | {"s_per_slide": 2.0, "scores": [0.5, 0.4, 0.9]})
    compare_summarize(gpu, sels([1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 2, 3]), cpu, sels([1, 2, 3, 4], [5, 6, 9, 10]))
    fig = gpu.figures
    assert fig["speedup_vs_cpu"] == 3.0 and fig["overlap_vs_cpu"] == 0.75  # mean of 1 and 0.5 over the 2 common
    assert math.isclose(fig["score_diff_vs_cpu"], 0.3)
    assert gpu.key == "2.00 s/slide, score 0.6000, x3.0 vs cpu, overlap vs cpu 0.75, repeat overlap 1.00"


PLANTED = """
import pytest
from tests.gpu.common import Row

@pytest.mark.gpu(check="good", device="cuda")
def test_good(record):
    record(Row("good", "cuda", "1x1", 0.5, "fast", figures={"x": 1.5}))

@pytest.mark.gpu(check="broken", device="cuda")
def test_broken(record):
    record(Row("broken", "cuda", "1x1", 0.1, "measured", figures={"x": 2.0}))
    assert not ["planted | problem"], "planted | problem\\nsecond line"

@pytest.mark.gpu(check="early", device="cpu")
def test_fails_before_measuring():
    raise RuntimeError("no such kernel")

@pytest.mark.gpu(check="absent", device="cuda")
def test_skipped():
    pytest.skip("no widget here")
"""
CONFTEST = """
from pathlib import Path
from tests.gpu.table import CheckTable

def pytest_configure(config):
    config.pluginmanager.register(CheckTable(out=Path("table.md")), "table")

from tests.gpu.conftest import check_table, record  # noqa: E402,F401  the fixtures under test
"""


def test_table_rows_follow_the_test_outcomes(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: planted\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_planted.py").write_text(PLANTED)
    proc = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_planted.py"], tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]  # a failed check fails the run
    assert "GPU checks" in proc.stdout and "written to table.md" in proc.stdout
    title, _, table = (tmp_path / "table.md").read_text().partition("\n\n")
    assert title.startswith("check_gpu (") and f"torch {torch.__version__}" in title
    columns, rows = parse_pipe_table(table.replace("\\|", "/"))
    assert columns == ["check", "device", "size", "seconds", "key figure", "status", "reason"]
    assert rows == [
        ["good", "cuda", "1x1", "0.50", "fast", "OK", ""],
        ["broken", "cuda", "1x1", "0.10", "measured", "FAIL", "AssertionError: planted / problem"],
        ["early", "cpu", "", "", "", "FAIL", "RuntimeError: no such kernel"],
        ["absent", "cuda", "", "", "", "SKIP", "no widget here"],
    ]
