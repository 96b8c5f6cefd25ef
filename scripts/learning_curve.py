"""Learning curves of the replica engine (full bags, or --bags DIR): which batch size / lr / size converges.

    .venv/bin/wsisum-synth out_dir=/tmp/lc_demo preset=demo      # the demo cohort (~10 s)
    python scripts/learning_curve.py --root /tmp/lc_demo [--tasks syn_bracs] [--max-epochs 60] \\
        [--config bs=4,lr=1e-3,hidden=64,att=32 --config bs=8,lr=2e-3] [--folds 0 1 2 3 4] [--seeds 0]

Every config trains folds x seeds replicas per task for max_epochs epochs without early stopping,
recording train/val/test loss and AUROC every epoch (test only to draw the curve; the engine never
selects on it). Printed per task: val AUROC / val loss / test AUROC vs epoch (mean over replicas),
then what per-replica early stopping on val loss with a given patience would pick: mean test AUROC
at the selected epoch and mean epochs trained (the cost), and the CPU time per replica-epoch.
Writes every curve to --out/curves.csv.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

from wsisum.apps._app import compose_app_config
from wsisum.evaluate.protocol import load_task_bags, replica_specs, torch_threads
from wsisum.evaluate.replicas import ReplicaSettings, fit_replicas
from wsisum.evaluate.setup import prepare_run
from wsisum.markdown import pipe_table

KEYS = {"bs": "batch_size", "lr": "lr", "hidden": "hidden_dim", "att": "att_dim", "wd": "weight_decay"}
KEYS |= {"dropout": "dropout", "sched": "scheduler"}
DEFAULT = "bs=4,lr=1e-3,hidden=64,att=32"


def parse_config(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k not in KEYS:
            raise SystemExit(f"unknown key {k} in --config {text} (known: {', '.join(KEYS)})")
        out[KEYS[k]] = v if k == "sched" else (int(v) if k in ("bs", "hidden", "att") else float(v))
    return out


def early_stop(curve: pd.DataFrame, patience: int) -> tuple[int, float, int]:
    """(selected epoch, test AUROC there, epochs trained) of one replica under early stopping on val loss."""
    best, best_epoch, wait = math.inf, 0, 0
    for row in curve.itertuples():
        if row.val_loss < best:
            best, best_epoch, wait = row.val_loss, row.epoch, 0
        else:
            wait += 1
        if wait >= patience:
            break
    sel = curve[curve["epoch"] == best_epoch].iloc[0]
    return best_epoch, float(sel["test_auroc"]), int(row.epoch) + 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, type=Path)
    ap.add_argument("--tasks", nargs="+", default=["syn_camelyon17", "syn_brca", "syn_bracs"])
    ap.add_argument("--bags", default="full", help="full, or a directory of summary bags")
    ap.add_argument("--config", action="append", help=f"e.g. {DEFAULT} (keys: {', '.join(KEYS)})")
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--patience", nargs="+", type=int, default=[5, 10, 15, 20])
    ap.add_argument("--every", type=int, default=5, help="print every n-th epoch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("outputs/learning_curve"))
    args = ap.parse_args()
    configs = args.config or [DEFAULT]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        cfg = compose_app_config(
            "evaluate",
            [f"data.root={args.root}", f"task={task}", f"bags={args.bags}", f"folds={args.folds}", "engine=replicas"],
            args.out / "run",
        )
        t_task, folds = prepare_run(cfg)
        bags = load_task_bags(cfg, t_task, folds, args.out / "run")
        specs = replica_specs(bags, folds, args.seeds, None)
        for text in configs:
            settings = ReplicaSettings(
                **{"max_epochs": args.max_epochs, "patience": args.max_epochs, "record_test_curve": True}
                | parse_config(text),
                monitor=t_task.monitor,
                monitor_mode=t_task.monitor_mode,
            )
            t0, c0 = time.perf_counter(), time.process_time()
            with torch_threads(args.threads):
                _, curves = fit_replicas(bags.store, specs, len(bags.classes), settings)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            for c in curves:
                rows.append({"task": task, "config": text, "run_s": seconds, "cpu_s": cpu, **c})
            print(
                f"{task} [{text}]: {len(specs)} replicas x {args.max_epochs} epochs in {seconds:.0f} s "
                f"({cpu:.0f} s CPU)",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out / "curves.csv", index=False, float_format="%.5g")  # after each
    report(pd.DataFrame(rows), args)
    return 0


def report(df: pd.DataFrame, args: argparse.Namespace) -> None:
    for task, by_task in df.groupby("task", sort=False):
        print(f"\n## {task}: mean over replicas (val AUROC / val loss / test AUROC)")
        mean = by_task.groupby(["config", "epoch"])[["val_auroc", "val_loss", "test_auroc"]].mean()
        epochs = sorted({e for e in by_task["epoch"] if e % args.every == args.every - 1 or e == 0})
        configs = list(dict.fromkeys(by_task["config"]))
        rows = []
        for e in epochs:
            cells = [str(e + 1)]
            for c in configs:
                m = mean.loc[(c, e)]
                cells.append(f"{m.val_auroc:.3f} / {m.val_loss:.3f} / {m.test_auroc:.3f}")
            rows.append(cells)
        print(pipe_table(["epoch", *configs], rows), end="")
        print("\nearly stopping on val loss: test AUROC at the selected epoch, mean epochs trained")
        rows = []
        for c in configs:
            sub = by_task[by_task["config"] == c]
            cells = []
            for p in args.patience:
                picks = [early_stop(g.sort_values("epoch"), p) for _, g in sub.groupby("replica")]
                auroc = sum(x[1] for x in picks) / len(picks)
                cells.append(f"{auroc:.3f} ({sum(x[2] for x in picks) / len(picks):.0f} ep)")
            per = sub["cpu_s"].iloc[0] / len(sub)  # one curve row per replica-epoch
            rows.append([c, f"{per:.2f}", *cells])
        columns = ["config", "CPU s per replica-epoch", *(f"patience {p}" for p in args.patience)]
        print(pipe_table(columns, rows), end="")


if __name__ == "__main__":
    sys.exit(main())
