"""Time per fold-replica of the two evaluation engines, side by side, on the same data and settings.

    python scripts/bench_eval.py --root /tmp/lc_demo [--task syn_bracs] [--bags full|SUMMARY_DIR] \\
        [--folds 0 1 2] [--seeds 0 1 2] [--epochs 5] [--batch-size 4] [--hidden 64 --att 32] [--threads 2]

Both engines train ABMIL (same sizes, lr, weight decay, batch size, no scheduler, no clipping) for
exactly --epochs epochs (early stopping off), select on val and test. Lightning runs one fit per
fold (seed 0); the replica engine runs folds x seeds at once. Printed: wall and process CPU seconds
per fold-replica and their ratio (CPU time is the steadier figure on a shared machine), and the
mean test AUROC of each as a sanity check (they differ by init and data order, not by much).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

from wsisum.apps._app import compose_app_config
from wsisum.evaluate.protocol import run_replicas
from wsisum.evaluate.runner import run_evaluation
from wsisum.markdown import pipe_table


def _timed(fn, cfg) -> tuple[float, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn(cfg)
    return time.perf_counter() - t0, time.process_time() - c0, result.mean("test_auroc")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--task", default="syn_bracs")
    ap.add_argument("--bags", default="full")
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="replica engine: seeds per fold")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--att", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    e = args.epochs
    common = [
        f"data.root={args.root}",
        f"task={args.task}",
        f"bags={args.bags}",
        f"folds=[{','.join(map(str, args.folds))}]",
        f"threads={args.threads}",
        f"mil.hidden_dim={args.hidden}",
        f"mil.att_dim={args.att}",
    ]
    lightning = [
        "engine=lightning",
        f"trainer.max_epochs={e}",
        f"early_stopping_patience={e + 1}",
        f"classifier.lr={args.lr}",
        "classifier.weight_decay=1e-4",
        "classifier.scheduler=none",
        f"data.batch_size={args.batch_size}",
        "trainer.enable_progress_bar=false",
        "logger=csv",
    ]
    replicas = [
        "engine=replicas",
        f"replicas.max_epochs={e}",
        f"replicas.patience={e + 1}",
        f"replicas.lr={args.lr}",
        "replicas.weight_decay=1e-4",
        "replicas.scheduler=none",
        f"replicas.batch_size={args.batch_size}",
        f"replicas.hidden_dim={args.hidden}",
        f"replicas.att_dim={args.att}",
    ]
    n_folds = len(args.folds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_app_config("evaluate", [*common, *lightning], Path(tmp) / "lightning")
        rows.append(("lightning", n_folds, *_timed(run_evaluation, cfg)))
        for seeds in ([0], args.seeds):
            cfg = compose_app_config(
                "evaluate", [*common, *replicas, f"seeds=[{','.join(map(str, seeds))}]"], Path(tmp) / f"r{len(seeds)}"
            )
            rows.append((f"replicas ({len(seeds)} seed(s))", n_folds * len(seeds), *_timed(run_replicas, cfg)))
    head = f"{args.task}, {args.bags} bags, {e} epochs, batch {args.batch_size}, ABMIL {args.hidden}/{args.att}"
    print(f"\n{head}, {args.threads} thread(s)\n")
    print(speed_table(rows), end="")
    return 0


def speed_table(rows: list[tuple]) -> str:
    """One row per engine run (name, fold-replicas, wall s, CPU s, AUROC), speed-ups against the first."""
    base_wall, base_cpu = rows[0][2] / rows[0][1], rows[0][3] / rows[0][1]
    columns = ["engine", "fold-replicas", "wall s", "CPU s", "wall s / replica", "CPU s / replica"]
    columns += ["speed-up (wall, CPU)", "AUROC"]
    cells = []
    for name, n, wall, cpu, auroc in rows:
        w, c = wall / n, cpu / n
        speed = f"{base_wall / w:.1f}x, {base_cpu / c:.1f}x"
        cells.append([name, str(n), f"{wall:.1f}", f"{cpu:.1f}", f"{w:.2f}", f"{c:.2f}", speed, f"{auroc:.3f}"])
    return pipe_table(columns, cells)


if __name__ == "__main__":
    sys.exit(main())
