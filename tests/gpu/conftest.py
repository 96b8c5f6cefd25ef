"""Fixtures of the GPU checks: the sizes, the row recorder, the skips, and the cpu baselines that the
cuda rows are compared against (measured once per session)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.gpu.common import NO_CUDA, Row, Sizes, cuda_ok, sizes
from tests.gpu.kmeans_check import faiss_gpu_missing, measure_kmeans
from tests.gpu.summarize_check import make_checkpoint, measure_summarize
from tests.gpu.table import CheckTable
from tests.gpu.train_check import bf16_missing


def pytest_configure(config: pytest.Config) -> None:
    CheckTable.of(config)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip every `gpu` test without CUDA, except the cpu baselines at CPU size (`check_gpu.py --small`)."""
    mark = item.get_closest_marker("gpu")
    if mark is None or cuda_ok():
        return
    if not (mark.kwargs.get("device") == "cpu" and CheckTable.of(item.config).small):
        pytest.skip(NO_CUDA)


@pytest.fixture(scope="session")
def check_table(pytestconfig: pytest.Config) -> CheckTable:
    return CheckTable.of(pytestconfig)


@pytest.fixture(scope="session")
def sz(check_table: CheckTable) -> Sizes:
    return sizes(check_table.small)


@pytest.fixture
def record(request: pytest.FixtureRequest, check_table: CheckTable) -> Callable[[Row], Row]:
    """Hand the test's measured row to the table (its status follows from the test's outcome)."""
    return lambda row: check_table.add(request.node.nodeid, row)


@pytest.fixture(scope="session")
def cuda_faiss() -> None:
    reason = faiss_gpu_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def bf16() -> None:
    reason = bf16_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def kmeans_cpu(sz: Sizes) -> Row:
    return measure_kmeans(sz, "cpu")


@pytest.fixture(scope="session")
def checkpoint(sz: Sizes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(sz, tmp_path_factory.mktemp("check_gpu") / "init.ckpt")


@pytest.fixture(scope="session")
def summarize_cpu(sz: Sizes, checkpoint: Path) -> tuple[Row, list[Any]]:
    return measure_summarize(sz, "cpu", checkpoint)
