"""The CUDA paths as tests, marked `gpu` and skipped without CUDA: faiss k-means, bf16 training (plain
autocast and Lightning's bf16-mixed), batched summarization. Run them with `pytest -m gpu` or
`python scripts/check_gpu.py`; each records its row of figures for the table printed at the end.

The cpu rows are the baselines the cuda rows are compared with (speed-ups, k-means inertia), at the
same sizes; tests/test_check_gpu.py runs the same helpers at CPU size in the default suite.
"""

from __future__ import annotations

import pytest

from tests.gpu.kmeans_check import compare_kmeans, kmeans_problems, measure_kmeans
from tests.gpu.summarize_check import compare_summarize, measure_summarize, summarize_problems
from tests.gpu.train_check import measure_train, measure_train_lightning, train_lightning_problems, train_problems


def row_of(check: str, device: str) -> pytest.MarkDecorator:
    return pytest.mark.gpu(check=check, device=device)


@row_of("kmeans", "cpu")
def test_kmeans_cpu_baseline(kmeans_cpu, record) -> None:
    bad = kmeans_problems(record(kmeans_cpu).figures)
    assert not bad, "; ".join(bad)


@row_of("kmeans", "cuda")
def test_kmeans_cuda_agrees_with_cpu(cuda_faiss, sz, kmeans_cpu, record) -> None:
    row = record(measure_kmeans(sz, "cuda"))
    bad = kmeans_problems(row.figures) + compare_kmeans(row, kmeans_cpu)
    assert not bad, "; ".join(bad)


@row_of("train", "cuda")
def test_train_bf16_autocast(bf16, sz, record) -> None:
    row = record(measure_train(sz, "cuda"))
    bad = train_problems(row.figures)
    assert not bad, "; ".join(bad)


@row_of("train-lightning", "cuda")
def test_train_lightning_bf16_mixed(bf16, sz, record) -> None:
    row = record(measure_train_lightning(sz, "cuda"))
    bad = train_lightning_problems(row.figures)
    assert not bad, "; ".join(bad)


@row_of("summarize", "cpu")
def test_summarize_cpu_baseline(summarize_cpu, record) -> None:
    row, _ = summarize_cpu
    bad = summarize_problems(record(row).figures, "cpu")
    assert not bad, "; ".join(bad)


@row_of("summarize", "cuda")
def test_summarize_cuda(sz, checkpoint, summarize_cpu, record) -> None:
    row, sels = measure_summarize(sz, "cuda", checkpoint)
    compare_summarize(record(row), sels, *summarize_cpu)
    bad = summarize_problems(row.figures, "cuda")
    assert not bad, "; ".join(bad)
