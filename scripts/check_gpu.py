"""Run the GPU checks (the `gpu` tests of tests/gpu) and print their table of figures. On a GPU machine:

    make install-gpu && .venv/bin/python scripts/check_gpu.py --out outputs/check_gpu.md

`--out FILE` also writes the table: FILE.json as JSON (every figure), any other name as Markdown.
`--small` runs CPU-sized problems, and then runs the cpu rows without CUDA too (what
tests/test_check_gpu.py runs). Further arguments go to pytest (e.g. `-k kmeans`). The exit status is
pytest's: 0 when every check passed or skipped, 1 when one failed. `pytest -m gpu` runs the same tests
and prints the same table; this script only adds --out and --small. Everything that measures or
judges lives in tests/gpu/ (one module per check, the table in tests/gpu/table.py).

Rows (cpu rows are the baselines of the cuda rows, at the same sizes):

  kmeans cpu/cuda  `wsisum.sampling.kmeans.kmeans` (k=50) on a 50-blob mixture, 100_000 x 768; the cuda
                   row (CUDA faiss, every GPU faiss sees) must give an inertia within 3 % of the cpu
                   row's and no empty cluster; SKIP where faiss has no GPU support (faiss-cpu installed;
                   `make install-gpu` swaps in faiss-gpu-cu12)
  train            AdamW steps of `SummarizerPretraining` (model=base, pool 500, batch 8, the 3 study
                   teachers) under torch.autocast(bfloat16) on one fixed batch: samples/s, peak memory,
                   the losses (finite required; decreasing or not is printed), a Linear's dtype (bf16)
  train-lightning  the same module through `lightning.Trainer(precision="bf16-mixed", max_steps=2)` over
                   `collate_bags` batches: every step ran, finite loss, bf16 activations, fp32 weights
  summarize        `WSISumSampler` (budget 64) from a freshly initialised checkpoint, 4 slides of
                   20_000 x 768 on cuda and the first 2 on cpu (no new cpu slide after 90 s): s/slide,
                   speed-up, overlap of the indices cuda vs cpu (printed), a repeat of the first slide
                   (the cpu repeat must select the same indices)

Expected runtime 1-3 min, nearly all of it the cpu summarize baseline (base model, fp32: 99 s per
20k-patch slide on 2 CPU cores, ~15-30 s on 16).

On this workplace's lent device machine (no network; its python3 has torch+CUDA, lightning, h5py,
pytest, pyyaml, but no faiss): prepare a faiss wheel here once (faiss-gpu-cu12 with its CUDA runtime
wheels is far over the 64 MiB that travels, so the kmeans cuda row is expected to be SKIP there):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl faiss-cpu==1.15.1

then one `run` with carry=[".whl"], timeout_s=420:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 scripts/check_gpu.py --out $OUT/check_gpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a plain checkout (the device machine has no editable install)
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import pytest

    from tests.gpu.table import CheckTable

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument("--out", type=Path, help="also write the table here (.json: JSON, else Markdown)")
    ap.add_argument("--small", action="store_true", help="CPU-sized problems")
    args, pytest_args = ap.parse_known_args(argv)
    table = CheckTable(out=args.out, small=args.small)
    return int(pytest.main([str(REPO / "tests" / "gpu"), "-m", "gpu", *pytest_args], plugins=[table]))


if __name__ == "__main__":
    sys.exit(main())
