"""Seconds per slide of the comparison samplers (mosaic, sdm, splice, kcenter, facility) and the
cheap baselines, on synthetic clustered slides of N patches and D features.

    python scripts/bench_samplers.py [--sizes 3000 100000] [--dims 128 1024] [--budget 64] [--threads 1]

Each sampler runs once per (N, D) at budget K, and once with budget=auto where it sizes itself
(the size it kept is printed). One thread by default: what a summarize worker process gets.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wsisum.sampling.base import AUTO, Sampler
from wsisum.sampling.collage import SDMSampler, SpliceSampler
from wsisum.sampling.coresets import FacilitySampler, KCenterSampler
from wsisum.sampling.samplers import KMeansSampler, RandomSampler
from wsisum.sampling.yottixel import MosaicSampler


def slide(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """20 morphologies of uneven size with noise, on a square grid of coords."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)).astype(np.float32) * 2
    share = rng.dirichlet(np.ones(20))
    feats = centres[rng.choice(20, n, p=share)] + rng.normal(size=(n, d)).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    return feats, np.stack([np.arange(n) % side, np.arange(n) // side], 1) * 256


def timed(sampler: Sampler, feats: np.ndarray, coords: np.ndarray, budget: int | str) -> tuple[float, int]:
    t0 = time.perf_counter()
    sel = sampler.select(feats, budget, slide_id="bench", coords=coords)
    return time.perf_counter() - t0, len(sel.indices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    samplers = [
        RandomSampler(0),
        KMeansSampler(0),
        MosaicSampler(0),
        SDMSampler(0),
        SpliceSampler(0),
        KCenterSampler(0),
        FacilitySampler(0),
    ]
    print(f"{'N':>7} {'D':>5} {'sampler':<9} {'K':>5} {'s/slide':>8} {'auto':>6} {'kept':>6} {'s/slide':>8}")
    with threadpool_limits(args.threads):
        for n in args.sizes:
            for d in args.dims:
                feats, coords = slide(n, d)
                for s in samplers:
                    sec, _ = timed(s, feats, coords, args.budget)
                    auto = ""
                    if s.auto_size:
                        auto_sec, kept = timed(s, feats, coords, AUTO)
                        auto = f"{'auto':>6} {kept:>6} {auto_sec:>8.2f}"
                    print(f"{n:>7} {d:>5} {s.name:<9} {args.budget:>5} {sec:>8.2f} {auto}", flush=True)


if __name__ == "__main__":
    main()
