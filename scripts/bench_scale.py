"""Scale: 100k-patch slides through k-means, summarization and MIL training, with the peak memory of each stage.

    python scripts/bench_scale.py [--root outputs/cohorts/large] [--stages kmeans summarize mil evaluate]
                                  [--mil abmil clam_sb meanpool transmil transmil_ckpt] [--workers 2] [--json FILE]

`--slides N` runs scripts/bench_slides.py instead: N tiny slides (discovery, planning, throughput, RSS).

The `large` synthetic cohort (6 slides of 10k-100k patches, D=768, 254k patches) is generated into
--root when no cohort is there (any other cohort there is used as it is). Every stage runs in a fresh
child process, so each peak is that stage's own and not the high-water mark of whatever ran before it:

  kmeans     faiss k-means (k=50, `wsisum.sampling.kmeans`) on the biggest slide alone
  summarize  `wsisum-summarize sampler=kmeans budget=64` over the whole cohort (--workers processes);
             every summary is then checked: `budget` rows, unique indices inside the source bag
  mil        one training step (forward, backward, AdamW) of each MIL config on the biggest bag,
             through `MILClassifier` as `wsisum-evaluate` trains (float16 bag -> float32 in forward);
             `transmil_ckpt` (not run by default) is TransMIL with checkpointing=true
  evaluate   `wsisum-evaluate bags=full mil=abmil` for 1 epoch on the one fold whose training set holds
             the biggest slide (checkpoint selection on the train loss: the large preset's 6 slides
             leave every validation split empty); skipped when no synthetic task config fits the cohort

Columns: `work s` is the measured work alone (child stages: after imports and the bag read; CLI stages:
the whole command), `base MB` the child's RSS before that work (interpreter, libraries, the bag as
stored), `peak MB` the largest peak RSS of any one process of the stage (`wait4` rusage: exact),
`tree MB` the largest sum of RSS over the stage's processes, sampled every 50 ms (shared library pages
counted once per process, so an over-estimate; it differs from `peak MB` only with worker processes),
`peak/bag` = peak MB over the biggest bag as float32 (N x D x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from wsisum.data.layouts import BAG_DIR
from wsisum.memory import maxrss_mb, peak_rss_mb, process_tree_rss_mb, rss_mb

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_SCALE_RESULT "
STAGES = ("kmeans", "summarize", "mil", "evaluate")
MIL_MODELS = ("abmil", "clam_sb", "meanpool", "transmil")
# extra --mil choices: a config with overrides (not run by default)
MIL_VARIANTS = {"transmil_ckpt": ("transmil", {"checkpointing": True})}


# ----------------------------------------------------------------------------------------------
# Child side: runs one stage in its own process and prints one JSON line
# ----------------------------------------------------------------------------------------------


def _emit(**result: object) -> None:
    result["peak_mb"] = peak_rss_mb()
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_kmeans(bag_path: str) -> None:
    import numpy as np

    from wsisum.data.bags import read_bag
    from wsisum.sampling.kmeans import kmeans

    bag = read_bag(bag_path)
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    res = kmeans(bag.features, 50, seed=0, slide_id=Path(bag_path).stem)
    seconds = time.perf_counter() - t0
    n = bag.features.shape[0]
    ok = res.k == 50 and res.assign.shape == (n,) and res.assign.min() >= 0 and res.assign.max() < res.k
    ok = ok and bool(np.isfinite(res.sqdist).all())
    _emit(seconds=seconds, base_mb=base, ok=bool(ok), clusters_used=int(len(np.unique(res.assign))))


def child_mil(bag_path: str, name: str, n_classes: int) -> None:
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from wsisum.data.bags import read_bag
    from wsisum.lit.classifier import MILClassifier

    bag = read_bag(bag_path, metadata=False)
    feats = torch.from_numpy(bag.features)  # stored dtype (float16), as the training loaders give it
    n, d = feats.shape
    batch = {"features": feats[None], "mask": torch.ones(1, n, dtype=torch.bool), "target": torch.tensor([1])}
    config, overrides = MIL_VARIANTS.get(name, (name, {}))
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(REPO / "configs" / "mil" / f"{config}.yaml"), **overrides)
    model = model(in_dim=d, n_classes=n_classes)
    module = MILClassifier(model).train()
    opt = torch.optim.AdamW(module.parameters(), lr=2e-4)
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    out = module(batch, with_target=True)
    loss = module._loss(out, batch["target"])
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    grads_ok = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in module.parameters())
    ok = bool(torch.isfinite(loss)) and grads_ok and tuple(out.logits.shape) == (1, n_classes)
    _emit(seconds=seconds, base_mb=base, ok=ok, loss=float(loss.detach()))


# ----------------------------------------------------------------------------------------------
# Parent side: spawn, watch, reap
# ----------------------------------------------------------------------------------------------


def measure(cmd: list[str], log: Path) -> dict:
    """Run `cmd`; its wall time, exit status, peak RSS of its largest process and sampled tree RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        tree_peak = [0.0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                tree_peak[0] = max(tree_peak[0], process_tree_rss_mb(proc.pid))
                done.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # wait4, not Popen.wait: its rusage is this child's alone (RUSAGE_CHILDREN would mix stages);
        # ru_maxrss covers the child and its reaped descendants (max over them, not a sum)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {}
    for line in log.read_text().splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_mb": maxrss_mb(usage),
        "tree_mb": max(tree_peak[0], maxrss_mb(usage)),
        "log": str(log),
        **{f"child_{k}": v for k, v in result.items()},
    }


def _app(name: str) -> list[str]:
    script = Path(sys.executable).parent / f"wsisum-{name}"
    return [str(script)] if script.exists() else [sys.executable, "-m", f"wsisum.apps.{name}"]


def check_summaries(out_dir: Path, cohort, sizes: dict[str, int], budget: int) -> str | None:
    """None when every slide has a valid summary, else what is wrong with the first bad one."""
    import numpy as np

    from wsisum.data.hdf5 import open_h5

    for sid, rec in cohort.slides.items():
        path = out_dir / rec.dataset / f"{sid}.h5"
        if not path.is_file():
            return f"{path}: missing"
        with open_h5(path) as f:
            idx, rows, n_source = f["indices"][()], f["features"].shape[0], int(f.attrs["n_source"])
        if rows != budget or len(np.unique(idx)) != budget or idx.min() < 0 or idx.max() >= n_source:
            return f"{path}: {rows} rows, {len(np.unique(idx))} unique indices in [{idx.min()}, {idx.max()}]"
        if n_source != sizes[sid]:
            return f"{path}: n_source {n_source} != {sizes[sid]} patches in the bag"
    return None


def find_task(root: Path, dataset: str) -> tuple[str, list[str]] | None:
    """The task config on `dataset` whose labels file and datasets this cohort has, with its class names.

    Only configs that name their `datasets` (the synthetic tasks) can be matched: camelyon17.yaml
    reads the same labels file, but says nothing of which dataset folders it expects."""
    from omegaconf import OmegaConf

    datasets = {p.name for p in (root / BAG_DIR).iterdir() if p.is_dir()}
    for cfg_path in sorted((REPO / "configs" / "task").glob("*.yaml")):
        cfg = OmegaConf.load(cfg_path)
        wanted = set(cfg.get("datasets") or ())
        present = (root / cfg.labels).is_file() and (root / cfg.splits).is_dir()
        if dataset in wanted and wanted <= datasets and present:
            return str(cfg.name), list(cfg.classes)
    return None


def fold_training_on(root: Path, task: str, slide_id: str) -> tuple[int, list[str]] | None:
    """The first fold whose training set holds `slide_id`, with all the slides of that fold."""
    import pandas as pd
    from omegaconf import OmegaConf

    splits = root / OmegaConf.load(REPO / "configs" / "task" / f"{task}.yaml").splits
    for path in sorted(splits.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[1])):
        df = pd.read_csv(path)
        if slide_id in set(df["train"].dropna()):
            slides = [s for c in ("train", "val", "test") for s in df[c].dropna()]
            return int(path.stem.split("_")[1]), slides
    return None


def main() -> None:
    if any(a == "--slides" or a.startswith("--slides=") for a in sys.argv[1:]):  # scale in slide count
        os.execv(sys.executable, [sys.executable, str(REPO / "scripts" / "bench_slides.py"), *sys.argv[1:]])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--root", default=str(REPO / "outputs" / "cohorts" / "large"), help="any cohort; the large preset when absent"
    )
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--mil", nargs="+", choices=[*MIL_MODELS, *MIL_VARIANTS], default=list(MIL_MODELS))
    ap.add_argument("--workers", type=int, default=2, help="wsisum-summarize worker processes (0 = in process)")
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "outputs" / "bench" / "scale"), help="summaries, run dirs, logs")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one stage in this process
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "kmeans":
            child_kmeans(rest[0])
        else:
            child_mil(rest[0], rest[1], int(rest[2]))
        return

    from wsisum.data.bags import bag_info
    from wsisum.data.cohort import Cohort
    from wsisum.data.synthetic import MANIFEST_NAME, MARKER_NAME, generate_cohort
    from wsisum.data.synthetic.preset import load_preset

    root, out = Path(args.root).resolve(), Path(args.out).resolve()
    t0 = time.perf_counter()
    foreign = (root / BAG_DIR).is_dir() and not (root / MARKER_NAME).exists()  # a cohort not from wsisum-synth
    if not (root / MANIFEST_NAME).exists() and not foreign:
        # absent, or interrupted (cohort.json is written last): generate, or resume, the large preset
        preset = load_preset("large")
        generate_cohort(root, preset, seed=0)
    cohort = Cohort(root)
    print(f"cohort {root}: ready in {time.perf_counter() - t0:.1f}s")
    infos = {sid: bag_info(rec.bag_path) for sid, rec in cohort.slides.items()}
    sizes = {sid: info.n_patches for sid, info in infos.items()}
    biggest = max(sizes, key=sizes.get)
    n_big, dim = sizes[biggest], infos[biggest].dim
    bag_mb = n_big * dim * 4 / 2**20
    big_path = str(cohort.slides[biggest].bag_path)
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    task = find_task(root, cohort.slides[biggest].dataset)
    rows: list[tuple[str, int, dict, str]] = []

    def run(stage: str, patches: int, cmd: list[str], note: str = "") -> dict:
        print(f"running {stage} ...", flush=True)
        m = measure(cmd, out / "logs" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", stage) + ".log"))
        if m["rc"] != 0:
            note = f"FAILED (exit {m['rc']}, see {m['log']})"
        elif m.get("child_ok") is False:
            note = f"INVALID OUTPUT (see {m['log']})"
        rows.append((stage, patches, m, note))
        return m

    if "kmeans" in args.stages:
        m = run("kmeans k=50", n_big, [*me, "kmeans", big_path])
        if m.get("child_ok"):
            rows[-1] = (*rows[-1][:3], f"valid, {m['child_clusters_used']} clusters used")
    if "summarize" in args.stages:
        summaries = out / "summaries"
        m = run(
            f"summarize kmeans/{args.budget} x{args.workers}w",
            sum(sizes.values()),
            [
                *_app("summarize"),
                f"data.root={root}",
                "sampler=kmeans",
                f"budget={args.budget}",
                f"out_dir={summaries}",
                f"workers={args.workers}",
                "overwrite=true",
                "progress=false",
                f"hydra.run.dir={out / 'runs' / 'summarize'}",
            ],
        )
        if m["rc"] == 0:
            problem = check_summaries(summaries, cohort, sizes, args.budget)
            rows[-1] = (*rows[-1][:3], f"INVALID: {problem}" if problem else f"{len(sizes)} valid summaries")
    if "mil" in args.stages:
        n_classes = len(task[1]) if task else 2
        for name in args.mil:
            m = run(f"mil step {name}", n_big, [*me, "mil", big_path, name, str(n_classes)])
            if m.get("child_ok"):
                rows[-1] = (*rows[-1][:3], f"loss {m['child_loss']:.3f}, finite gradients")
    if "evaluate" in args.stages:
        found = fold_training_on(root, task[0], biggest) if task else None
        if task is None or found is None:
            why = "no task config matches its labels/splits" if task is None else f"no fold that trains on {biggest}"
            print(f"evaluate: skipped, the cohort at {root} has {why}")
        else:
            fold, fold_slides = found
            run_dir = out / "runs" / "evaluate"
            m = run(
                f"evaluate abmil fold {fold}",
                sum(sizes[s] for s in fold_slides),
                [
                    *_app("evaluate"),
                    f"data.root={root}",
                    f"task={task[0]}",
                    "bags=full",
                    "mil=abmil",
                    f"folds=[{fold}]",
                    "trainer.max_epochs=1",
                    "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={run_dir}",
                ],
            )
            if m["rc"] == 0:
                import pandas as pd

                metrics = pd.read_csv(run_dir / "metrics.csv").set_index("metric")["value"]
                rows[-1] = (
                    *rows[-1][:3],
                    f"fit: peak {metrics['peak_rss_mb']:.0f} MB, epoch {metrics['epoch_time_s']:.1f}s, "
                    f"{int(metrics['n_train'])} train bags (<= {int(metrics['patches_per_bag_max'])} patches)",
                )

    print(
        f"\ncohort: {len(sizes)} slides, {sum(sizes.values())} patches, D={dim}; biggest bag {biggest} "
        f"{n_big} patches = {bag_mb:.0f} MB as float32; {os.cpu_count()} CPU cores"
    )
    header = f"{'stage':<30}{'patches':>9}{'work s':>8}{'wall s':>8}{'base MB':>9}{'peak MB':>9}{'+work MB':>10}"
    print(header + f"{'tree MB':>9}{'peak/bag':>10}  note")
    for stage, patches, m, note in rows:
        work = m.get("child_seconds", m["wall_s"])
        base = m.get("child_base_mb")
        base_s, inc_s = (
            (f"{base:>9.0f}", f"{m['peak_mb'] - base:>10.0f}") if base is not None else (" " * 8 + "-", " " * 9 + "-")
        )
        print(
            f"{stage:<30}{patches:>9}{work:>8.1f}{m['wall_s']:>8.1f}{base_s}{m['peak_mb']:>9.0f}{inc_s}"
            f"{m['tree_mb']:>9.0f}{m['peak_mb'] / bag_mb:>9.2f}x  {note}"
        )
    print("peak/bag: peak RSS of the largest process over the biggest bag as float32 (N x D x 4);")
    print("+work MB: peak minus the child's RSS before the measured work (what the stage itself adds)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "root": str(root),
                    "biggest_bag": {"slide_id": biggest, "patches": n_big, "dim": dim, "float32_mb": bag_mb},
                    "rows": [{"stage": s, "patches": p, **m, "note": note} for s, p, m, note in rows],
                },
                indent=2,
            )
            + "\n"
        )
    if any(note.startswith(("FAILED", "INVALID")) for *_, note in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
