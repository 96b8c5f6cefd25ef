"""Scale in slide count: a cohort of many tiny bags (a TCGA-sized 10,000 by default).

    python scripts/bench_slides.py [--slides 10000] [--root outputs/cohorts/slides10000] [--json FILE]
    python scripts/bench_scale.py --slides 10000      # the same

What a many-slide cohort costs beyond the per-patch work, each measured in a fresh child process:

  discover   `Cohort(root)`: listing every bag of the layout
  plan       `plan_jobs` for a summarize run (existing-summary checks included)
  summarize  slides/s of `sampler=random` and `sampler=kmeans`, `workers` 0, 1 and 2 (whole cohort,
             through `summarize_cohort` as `wsisum-summarize` runs it)
  setup      an evaluate fold's `ClassificationDataModule.setup()` (labels, split, every bag header)
  rss        peak RSS of `random` summaries over the first 1,000 slides and over all of them: a long run
             must not grow with the slides it has done (results are not accumulated per slide)

Goals (issue: 10,000-slide cohorts): discover + plan < 10 s; `random` >= 200 slides/s on 2 cores;
RSS flat from 1k to 10k slides. The cohort (D=32, 20-80 patches per slide, labels and one split)
is written once into --root and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wsisum.data.layouts import BAG_DIR
from wsisum.memory import peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
TAG = "BENCH_SLIDES_RESULT "
DATASET, TASK, DIM = "many", "task", 32


def make_cohort(root: Path, n_slides: int) -> None:
    """Tiny random bags (contract layout), a labels CSV and one train/val/test split."""
    import numpy as np

    from wsisum.data.bags import write_bag
    from wsisum.data.splits import write_split

    marker = root / f".bench_slides_{n_slides}"
    if marker.is_file():
        return
    rng = np.random.default_rng(0)
    ids = [f"S{i:06d}" for i in range(n_slides)]
    for sid in ids:
        n = int(rng.integers(20, 81))
        coords = np.stack([np.arange(n) % 9, np.arange(n) // 9], 1).astype(np.int64) * 256
        write_bag(root / BAG_DIR / DATASET / f"{sid}.h5", rng.normal(size=(n, DIM)).astype(np.float32), coords)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = [f"{sid},class{i % 2},case-{sid}" for i, sid in enumerate(ids)]
    (root / "labels" / f"{TASK}.csv").write_text("slide_id,label,case_id\n" + "\n".join(rows) + "\n")
    perm = list(rng.permutation(ids))
    k = n_slides // 5
    write_split(root / "splits" / TASK / "splits_0.csv", perm[2 * k :], perm[k : 2 * k], perm[:k])
    marker.write_text("done\n")


# ---- child side: one measurement per process ---------------------------------------------------


def child(what: str, root: Path, arg: str) -> dict:
    from wsisum.data.cohort import Cohort

    t0 = time.perf_counter()
    cohort = Cohort(root)
    discover = time.perf_counter() - t0
    if what == "discover":
        from wsisum.sampling.samplers import RandomSampler
        from wsisum.summarize.jobs import RunReport, plan_jobs

        out = Path(tempfile.mkdtemp(prefix="bench-slides-plan-"))
        t1 = time.perf_counter()
        jobs = plan_jobs(cohort, out, RandomSampler(0), 16, False, RunReport())
        plan = time.perf_counter() - t1
        shutil.rmtree(out)
        return {"slides": len(cohort.slides), "discover_s": discover, "plan_s": plan, "jobs": len(jobs)}
    if what == "setup":
        from wsisum.data.datamodules import ClassificationDataModule

        t1 = time.perf_counter()
        dm = ClassificationDataModule(root, TASK, ["class0", "class1"], fold=0, on_bad_slide="skip")
        dm.setup()
        n = sum(len(p.slide_ids) for p in dm.parts.values())
        return {"setup_s": time.perf_counter() - t1, "slides": n}
    # summarize: arg = "<sampler>:<workers>:<max slides>"
    from wsisum.api import build_sampler
    from wsisum.summarize.run import summarize_cohort

    sampler_name, workers, limit = arg.split(":")
    if int(limit) < len(cohort.slides):
        keep = list(cohort.slides)[: int(limit)]
        cohort.slides = {s: cohort.slides[s] for s in keep}
    sampler = build_sampler(sampler_name, seed=0)  # its config as the apps compose it
    out = Path(tempfile.mkdtemp(prefix="bench-slides-out-"))
    try:
        report = summarize_cohort(cohort, sampler, 16, out, workers=int(workers), progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert report.ok, list(report.failed.values())[:3]
    n = len(report.done)
    return {"slides": n, "seconds": report.seconds, "slides_per_s": n / report.seconds, "peak_mb": peak_rss_mb()}


def run_child(what: str, root: Path, arg: str = "") -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--root", str(root), "--arg", arg]
    r = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    for line in r.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG) :])
    raise RuntimeError(f"{what} {arg} failed:\n{r.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=10_000)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None)
    ap.add_argument("--arg", default="")
    args = ap.parse_args()
    root = args.root or REPO / "outputs" / "cohorts" / f"slides{args.slides}"
    if args.child:
        print(TAG + json.dumps(child(args.child, root, args.arg)), flush=True)
        return
    t0 = time.perf_counter()
    make_cohort(root, args.slides)
    print(f"cohort: {args.slides} slides in {root} ({time.perf_counter() - t0:.1f} s to make or find)")
    res: dict = {"slides": args.slides}
    res["discover"] = d = run_child("discover", root)
    print(f"discover {d['discover_s']:.2f} s + plan {d['plan_s']:.2f} s = {d['discover_s'] + d['plan_s']:.2f} s")
    res["setup"] = s = run_child("setup", root)
    print(f"evaluate setup (labels, split, {s['slides']} bag headers): {s['setup_s']:.2f} s")
    res["summarize"] = {}
    for name in ("random", "kmeans"):
        for workers in (0, 1, 2):  # 0: in this process (no worker start-up)
            r = run_child("summarize", root, f"{name}:{workers}:{args.slides}")
            res["summarize"][f"{name}/{workers}"] = r
            print(f"summarize {name:<6} workers={workers}: {r['slides_per_s']:7.1f} slides/s ({r['seconds']:.1f} s)")
    small = run_child("summarize", root, f"random:0:{min(1000, args.slides)}")
    big = run_child("summarize", root, f"random:0:{args.slides}")
    res["rss"] = {"1k": small, "all": big}
    print(
        f"peak RSS, random summaries in-process: {small['peak_mb']:.0f} MB at {small['slides']} slides, "
        f"{big['peak_mb']:.0f} MB at {big['slides']} (ratio {big['peak_mb'] / small['peak_mb']:.2f})"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
