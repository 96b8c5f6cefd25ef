"""Bag streaming speed: the classification DataModule versus a plain h5py read loop, same files.

    python scripts/bench_io.py [--root outputs/cohorts/demo] [--task syn_brca] [--repeats 3]

Both read every bag of one fold (train + val + test) with the page cache warm; the DataModule also
collates and validates values (NaN/Inf) once per unchanged file and process, i.e. in the warm-up
pass, as in a training run's first epoch. Goal: ratio (DataModule / plain) >= 0.8. Realistic bag sizes:
`--root outputs/cohorts/large --preset large --task camelyon17` (10k-100k patches per bag).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from omegaconf import OmegaConf

from wsisum.data.datamodules import ClassificationDataModule
from wsisum.data.hdf5 import open_h5

REPO = Path(__file__).resolve().parents[1]


def plain_loop(paths: list[str]) -> int:
    nbytes = 0
    for p in paths:
        with open_h5(p) as f:
            feats = f["features"][()]
            coords = f["coords"][()]
        nbytes += feats.nbytes + coords.nbytes
    return nbytes


def datamodule_loop(dm: ClassificationDataModule) -> int:
    n = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            n += int(batch["n_patches"].sum())
    return n


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / "outputs" / "cohorts" / "demo"))
    ap.add_argument("--preset", default="demo", help="generated into --root when it holds no cohort")
    ap.add_argument("--task", default=None, help="default: the first task of the cohort")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(args.root)
    if not (root / "cohort.json").exists():
        from wsisum.data.synthetic import generate_cohort

        preset = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "preset" / f"{args.preset}.yaml"))
        generate_cohort(root, preset, seed=0)
    task = args.task or sorted(p.stem for p in (root / "labels").glob("*.csv"))[0]
    results = []
    for workers in (0, 2):
        dm = ClassificationDataModule(root, task, num_workers=workers)
        dm.setup()
        paths = [p for part in dm.parts.values() for p in part.paths]
        nbytes = plain_loop(paths)  # warm the page cache
        datamodule_loop(dm)
        t_plain = best_of(lambda paths=paths: plain_loop(paths), args.repeats)
        t_dm = best_of(lambda dm=dm: datamodule_loop(dm), args.repeats)
        results.append((workers, len(paths), nbytes, t_plain, t_dm))
    print(f"cohort {root}  task {task}  ({results[0][1]} bags, {results[0][2] / 1e6:.1f} MB stored)")
    print(f"{'reader':<28}{'bags/s':>10}{'MB/s':>10}{'ratio':>8}")
    for workers, n, nbytes, t_plain, t_dm in results:
        print(f"{'plain h5py loop':<28}{n / t_plain:>10.1f}{nbytes / 1e6 / t_plain:>10.1f}{'':>8}")
        label = f"DataModule, {workers} workers"
        print(f"{label:<28}{n / t_dm:>10.1f}{nbytes / 1e6 / t_dm:>10.1f}{t_plain / t_dm:>8.2f}")


if __name__ == "__main__":
    main()
