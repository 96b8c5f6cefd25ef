"""Seconds per slide of every registered sampler over the whole path: read the bag, select, write.

    python scripts/bench_samplers.py [--sizes 10000 40000 100000] [--dim 1024] [--budget 64]
        [--repeats 1] [--threads 1] [--samplers wsisum kmeans ...] [--markdown]

Each size gets one synthetic clustered slide, written once as an .h5 bag with float16 features (as
the synthetic cohorts store them). Each sampler runs in its own Python process (so `torch` in
`sys.modules` is that sampler's doing), built with `wsisum.api.build_sampler(name, seed=0)` afresh
for every slide (nothing is cached between slides: k-means is measured cold), after one untimed
warm-up slide that pays the lazy imports. A slide's time is `read_bag` -> `sampler.select` -> the
summary written with `wsisum.summarize.writer` (what `wsisum-summarize` does), best of `--repeats`.
`wsisum` and `wsisum_search` run with `rarity=slide` (no cohort), `wsisum` with a selector of the
fitted shape (`with_selector`: the summary a cohort with slide embeddings gets) and, as
`wsisum_composition`, without it (learned_share=0: the summary without slide embeddings); a sampler that cannot be built
without a checkpoint (`attention`) is skipped with its reason. One thread by default: what a
summarize worker process gets. `s/slide` is wall time (the ratios use it); `cpu s` is the process's
CPU time for the same run, close to the wall time on an idle machine and steadier on a loaded one.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPTIONS = {name: {"rarity": "slide"} for name in ("wsisum", "wsisum_search")}  # no cohort needed
VARIANTS = {"wsisum_composition": ("wsisum", {"rarity": "slide", "learned_share": 0.0})}  # name -> (config, options)
DATASET = "bench"  # the dataset a fitted selector is attached to (wsisum)


def with_selector(sampler, dim: int):
    """`wsisum` with a selector of the fitted shape (seeded random values: the summary-time
    cost does not depend on them; the cohort fit is timed by the study that runs it)."""
    if hasattr(sampler, "selectors"):
        from wsisum.sampling.teacher_attention import HIDDEN

        rng = np.random.default_rng(0)
        shapes = {"v": (dim, HIDDEN), "bv": (HIDDEN,), "u": (dim, HIDDEN), "bu": (HIDDEN,), "w": (HIDDEN,)}
        params = {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes.items()}
        sampler.selectors[DATASET] = params | {"mean": np.zeros(dim, np.float32), "scale": np.ones(dim, np.float32)}
    return sampler


def slide(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """20 morphologies of uneven size with noise, on a square grid of coords."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)).astype(np.float32) * 2
    share = rng.dirichlet(np.ones(20))
    feats = centres[rng.choice(20, n, p=share)] + rng.normal(size=(n, d)).astype(np.float32)
    side = int(np.ceil(np.sqrt(n)))
    return feats, np.stack([np.arange(n) % side, np.arange(n) // side], 1) * 256


def best_of(repeats: int, run, setup=lambda: None) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest `run(setup())` of `repeats`; `setup` runs outside the clock.
    CPU seconds of this process tell what the wall time would be on an idle machine (one thread)."""
    times = []
    for _ in range(repeats):
        arg = setup()
        t0, c0 = time.perf_counter(), time.process_time()
        run(arg)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(times)


def worker(name: str, bags: list[str], budget: int, repeats: int, threads: int, out_dir: Path) -> dict:
    """One sampler over every bag, in this (fresh) process: {"times": {n: s}, "torch": bool} or {"skip": why}."""
    import faiss
    from threadpoolctl import threadpool_limits

    from wsisum.api import build_sampler
    from wsisum.data.bags import read_bag
    from wsisum.summarize.writer import write_summary

    faiss.omp_set_num_threads(threads)
    config, options = VARIANTS.get(name, (name, OPTIONS.get(name, {})))
    dim = read_bag(bags[-1]).features.shape[1]
    try:
        build_sampler(config, seed=0, **options)
    except Exception as err:  # any build failure (a missing checkpoint) is a skip reason
        return {"skip": f"{type(err).__name__}: {err}"}

    def fresh():  # a new sampler per slide, built outside the clock: its k-means cache starts empty
        return with_selector(build_sampler(config, seed=0, **options), dim)

    def path_once(bag_path: str, sampler) -> None:
        bag = read_bag(bag_path)
        sel = sampler.select(bag.features, budget, slide_id=Path(bag_path).stem, coords=bag.coords, dataset=DATASET)
        write_summary(out_dir / f"{name}_{Path(bag_path).name}", bag, sel, sampler.recipe(budget), bag_path)

    times = {}
    with threadpool_limits(threads):
        path_once(bags[-1], fresh())  # warm-up on a small bag: lazy imports, first-call costs
        for bag_path in bags[:-1]:
            times[Path(bag_path).stem] = best_of(repeats, lambda s, p=bag_path: path_once(p, s), fresh)
    return {"times": times, "torch": "torch" in sys.modules}


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """A plain or Markdown table; the `sampler` column is left-aligned, the numbers right-aligned."""
    left = [h == "sampler" for h in header]
    if markdown:
        rule = "|" + "|".join("---" if lf else "---:" for lf in left) + "|"
        return "\n".join(
            ["| " + " | ".join(r) + " |" for r in [header]] + [rule] + ["| " + " | ".join(r) + " |" for r in rows]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if lf else c.rjust(w) for c, w, lf in zip(r, widths, left))

    return "\n".join(fmt(r) for r in [header, *rows])


def ratio(a: float | None, b: float | None) -> str:
    if not (a and b):
        return "-"
    return f"{a / b:.1f}" if a / b >= 1 else f"{a / b:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 100_000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samplers", nargs="+", default=None, help="default: every registered sampler")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one sampler in a child process
    ap.add_argument("--bags", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = worker(args.worker, args.bags, args.budget, args.repeats, args.threads, Path(args.out))
        print(json.dumps(result))
        return

    from threadpoolctl import threadpool_limits

    from wsisum.api import sampler_names
    from wsisum.data.bags import read_bag, write_bag

    names = args.samplers or [*sampler_names(), *VARIANTS]
    unknown = sorted(set(names) - set(sampler_names()) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown sampler(s) {', '.join(unknown)}; registered: {', '.join(sampler_names())}")
    sizes = sorted(set(args.sizes))
    with tempfile.TemporaryDirectory(prefix="bench_samplers_") as tmp:
        bags, read, read_cpu = [], {}, {}
        with threadpool_limits(args.threads):
            for n in sizes:
                feats, coords = slide(n, args.dim)
                bags.append(str(write_bag(Path(tmp) / f"{n}.h5", feats.astype(np.float16), coords)))
                read[n], read_cpu[n] = best_of(max(args.repeats, 3), lambda _, p=bags[-1]: read_bag(p))
        warm, warm_xy = slide(min(500, sizes[0]), args.dim, seed=1)
        bags.append(str(write_bag(Path(tmp) / "warmup.h5", warm.astype(np.float16), warm_xy)))
        results = {}
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--bags", *bags, "--out", tmp]
            cmd += ["--budget", str(args.budget), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                results[name] = {"skip": f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}
            else:
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"# {name}: {results[name].get('skip', 'done')}", file=sys.stderr, flush=True)

    ran = {k: v for k, v in results.items() if "times" in v}
    sec = {(k, n): v["times"][str(n)][0] for k, v in ran.items() for n in sizes}
    cpu = {(k, n): v["times"][str(n)][1] for k, v in ran.items() for n in sizes}
    head = ["N", "sampler", "s/slide", "x kmeans", "x read", "torch", "cpu s"]
    body = []
    for n in sizes:
        body.append(
            [
                f"{n:,}",
                "(read only)",
                f"{read[n]:.3f}",
                ratio(read[n], sec.get(("kmeans", n))),
                "1.0",
                "-",
                f"{read_cpu[n]:.3f}",
            ]
        )
        for k in ran:
            t = sec[(k, n)]
            body.append([f"{n:,}", k, f"{t:.3f}", ratio(t, sec.get(("kmeans", n))), ratio(t, read[n]),
                         "yes" if ran[k]["torch"] else "no", f"{cpu[(k, n)]:.3f}"])  # fmt: skip
    print(table(head, body, args.markdown), flush=True)
    print()
    lo, hi = sizes[0], sizes[-1]
    mid = sizes[1] if len(sizes) > 1 else hi
    head = ["sampler", f"exponent {lo:,}->{hi:,}", f"x {lo:,}->{mid:,}"]
    scale = []
    for k in ran:
        a, b, m = sec[(k, lo)], sec[(k, hi)], sec[(k, mid)]
        expo = f"{math.log(b / a) / math.log(hi / lo):.2f}" if hi > lo else "-"
        scale.append([k, expo, f"{m / a:.2f}"])
    print(table(head, scale, args.markdown))
    for k, v in results.items():
        if "skip" in v:
            print(f"\nskipped {k}: {v['skip']}")


if __name__ == "__main__":
    main()
