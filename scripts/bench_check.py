"""`wsisum-check` scan speed on a large cohort of tiny slides (headers only, so file count is what costs).

    python scripts/bench_check.py [--slides 10000] [--teachers 2] [--datasets 2] [--repeats 3] [--workers N] [--keep DIR]

Writes the cohort (bags of 16 patches, D = 32, one labels file and a 5-fold split) in a temp dir,
then times `check_cohort` with task and teachers, page cache warm (files just written). Goal: a
few seconds for 10,000 slides, so checking before a long run is free.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from wsisum.data.bags import write_bag
from wsisum.data.check import check_cohort
from wsisum.data.embeddings import write_embedding
from wsisum.data.layouts import BAG_DIR, EMBEDDINGS_DIR
from wsisum.data.splits import write_split

TEACHER_DIMS = (768, 512, 1280, 1536)


def write_cohort(root: Path, n_slides: int, n_teachers: int, n_datasets: int) -> None:
    """Tiny bags and teacher files in the contract layout, labels/bench.csv and splits/bench/."""
    feats = np.zeros((16, 32), np.float32)
    coords = np.zeros((16, 2), np.int64)
    ids = []
    for i in range(n_slides):
        ds = f"ds{i % n_datasets}"
        sid = f"{ds}-{i:06d}"
        write_bag(root / BAG_DIR / ds / f"{sid}.h5", feats, coords)
        for t in range(n_teachers):
            dim = TEACHER_DIMS[t % len(TEACHER_DIMS)]
            write_embedding(root / EMBEDDINGS_DIR / ds / f"T{t}" / f"{sid}.h5", np.zeros(dim, np.float32))
        ids.append(sid)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = [f"{sid},c{i % 2}" for i, sid in enumerate(ids)]
    (root / "labels" / "bench.csv").write_text("slide_id,label\n" + "\n".join(rows) + "\n")
    for k in range(5):
        perm = list(np.random.default_rng(k).permutation(ids))
        n = len(ids) // 5
        write_split(root / "splits" / "bench" / f"splits_{k}.csv", perm[2 * n :], perm[n : 2 * n], perm[:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=10_000)
    parser.add_argument("--teachers", type=int, default=2)
    parser.add_argument("--datasets", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="header-reading processes (default: up to 8)")
    parser.add_argument("--keep", type=Path, default=None, help="write the cohort here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "cohort"
        if (root / BAG_DIR).is_dir():
            print(f"reusing the cohort in {root}")
        else:
            t0 = time.perf_counter()
            write_cohort(root, args.slides, args.teachers, args.datasets)
            print(f"wrote {args.slides} slides x (1 bag + {args.teachers} teachers) in {time.perf_counter() - t0:.1f}s")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            report = check_cohort(root, task={"name": "bench"}, workers=args.workers)
            times.append(time.perf_counter() - t0)
        assert not report.problems, [p.line() for p in report.problems[:5]]
        n_files = report.n_slides * (1 + args.teachers)
        best = min(times)
        print(
            f"check_cohort: {report.n_slides} slides, {n_files} h5 headers + labels + 5 splits, "
            f"{os.cpu_count()} CPUs, workers={args.workers or 'auto'}: "
            f"best {best:.2f}s of {args.repeats} ({1e6 * best / n_files:.0f} us per file)"
        )


if __name__ == "__main__":
    main()
