"""Aggregate the `metrics.csv` of many runs: mean ± std over (fold, seed) replicates, a Markdown table,
AUROC-vs-budget plots.

    python -m wsisum.evaluate.aggregate SWEEP_DIR [MORE_DIRS_OR_CSVS ...] [--out DIR]

A `-m` multirun of `wsisum-evaluate` does this by itself when it ends (see `hydra_callbacks`);
the CLI merges runs made separately, e.g. a full-bag run with a sweep over summaries.
Outputs: `aggregate.csv` (task, sampler, budget, mil, metric, mean, std, n), `aggregate.md`,
and `auroc_vs_budget_<mil>.png` (one panel per task, one line per sampler, the full-bag result as a
dashed reference line with its ±std band). std is the sample standard deviation (ddof=1) over every
(fold, seed) replicate, and n their number; files from before seeds count as seed 0. Paired
comparisons of samplers on the same replicates are in `wsisum.evaluate.paired`.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError, print_error
from wsisum.evaluate.results import FULL, find_metrics, read_metrics
from wsisum.markdown import pipe_table

log = logging.getLogger(__name__)

KEYS = ["task", "sampler", "budget", "mil"]
REPLICATE = ["fold", "seed"]  # one (fold, seed) pair is one replicate
TABLE_METRICS = (
    "test_auroc",
    "test_balanced_accuracy",
    "test_f1_macro",
    "epoch_time_s",
    "peak_rss_mb",
    "peak_gpu_mem_mb",
    "patches_per_bag",
)


def collect(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Every row of every metrics.csv under `paths` (files or directories)."""
    files = find_metrics(paths)
    if not files:
        raise InputError(None, f"no metrics.csv under {', '.join(map(str, paths))}")
    df = with_seed(pd.concat([read_metrics(f) for f in files], ignore_index=True))
    dup = df.duplicated(subset=[*KEYS, *REPLICATE, "metric"], keep=False)
    if dup.any():
        log.warning(
            "%d rows repeat a (task, sampler, budget, mil, fold, seed, metric) key across runs: all are averaged",
            int(dup.sum()),
        )
    return df


def with_seed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `seed` column (0 where a file from before seeds had none), just after `fold`."""
    df = df.copy()
    if "seed" in df.columns:
        df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    else:
        df.insert(df.columns.get_loc("fold") + 1 if "fold" in df.columns else len(df.columns), "seed", 0)
    return df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and count of each metric per (task, sampler, budget, mil) over its (fold, seed)
    replicates, NaN values skipped: n is the number of replicates with a value."""
    g = df.groupby([*KEYS, "metric"], dropna=False, sort=True)["value"]
    out = g.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    out["budget"] = out["budget"].astype("Int64")
    return out


def format_mean_std(mean: float, std: float, n: int, digits: int) -> str:
    """'0.912 ± 0.031' over n replicates ('n/a' for none, the mean alone for one)."""
    if n == 0 or math.isnan(mean):
        return "n/a"
    if n < 2 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_digits(metric: str) -> int:
    """Decimals a metric is shown with: 3 for scores, 2 for seconds, 0 for MB, else 1."""
    return 3 if metric.startswith(("test_", "val_")) else (2 if metric.endswith("_s") else 0 if "mb" in metric else 1)


def budget_text(b: object) -> str:
    """A budget cell: '' for the full bags (no budget), else the whole number."""
    return "" if b is None or b is pd.NA or (isinstance(b, float) and math.isnan(b)) else str(int(b))


def markdown_table(agg: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS) -> str:
    """Wide Markdown table: one row per (task, mil, sampler, budget), mean ± std over replicates per metric.

    Where a full-bag row exists for the same task and MIL model, `epoch time full/this` says how many
    times faster a training epoch on these bags is than on the full bags.
    """
    metrics = [m for m in metrics if m in set(agg["metric"])]
    wide = {}
    for key, grp in agg.groupby(KEYS, dropna=False, sort=False):
        cells = {r.metric: (r.mean, r.std, r.n) for r in grp.itertuples()}
        wide[key] = cells
    full_time = {(k[0], k[3]): c["epoch_time_s"][0] for k, c in wide.items() if k[1] == FULL and "epoch_time_s" in c}
    speed = bool(full_time)
    head = ["task", "mil", "sampler", "budget", "replicates", *metrics] + (["epoch time full/this"] if speed else [])
    rows = []

    def order(k: tuple) -> tuple:
        b = budget_text(k[2])
        return (k[0], k[3], k[1] != FULL, k[1], int(b) if b else -1)

    for key in sorted(wide, key=order):
        cells = wide[key]
        n = max((c[2] for c in cells.values()), default=0)
        row = [key[0], key[3], key[1], budget_text(key[2]), str(n)]
        row += [format_mean_std(*cells[m], metric_digits(m)) if m in cells else "" for m in metrics]
        if speed and key[1] == FULL:
            row.append("(ref)" if (key[0], key[3]) in full_time else "")
        elif speed:
            ref, mine = full_time.get((key[0], key[3])), cells.get("epoch_time_s", (math.nan,))[0]
            row.append(f"{ref / mine:.1f}×" if ref and mine and not math.isnan(mine) and mine > 0 else "")
        rows.append(row)
    return pipe_table(head, rows)


def plot_metric_vs_budget(agg: pd.DataFrame, out_dir: Path, metric: str = "test_auroc") -> list[Path]:
    """One PNG per MIL model: a panel per task, metric (mean ± std over replicates) vs budget per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = agg[agg["metric"] == metric]
    written = []
    for mil, by_mil in sub.groupby("mil", sort=True):
        budgeted = by_mil[by_mil["budget"].notna()]
        if budgeted.empty:
            continue
        tasks = sorted(by_mil["task"].unique())
        samplers = sorted(budgeted["sampler"].unique())  # same colour and offset for a sampler in every panel
        colors = {name: f"C{i % 10}" for i, name in enumerate(samplers)}
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            rows = by_mil[by_mil["task"] == task]
            for sampler, s in rows[rows["budget"].notna()].groupby("sampler", sort=True):
                s = s.sort_values("budget")
                dodge = 2 ** (0.05 * (samplers.index(sampler) - (len(samplers) - 1) / 2))  # error bars side by side
                x = s["budget"].astype(float).to_numpy() * dodge
                ax.errorbar(
                    x, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, color=colors[sampler], label=sampler
                )
            full = rows[rows["sampler"] == FULL]
            if not full.empty:
                m, sd = float(full["mean"].iloc[0]), float(full["std"].fillna(0).iloc[0])
                ax.axhline(m, color="black", linestyle="--", linewidth=1.2, label=f"full bags ({m:.3f})")
                ax.axhspan(m - sd, m + sd, color="grey", alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            budgets = sorted(int(b) for b in rows["budget"].dropna().unique())
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.set_xlabel("budget (patches per slide)")
            ax.set_ylabel(metric.replace("test_", "test ").replace("_", " "))
            ax.set_title(f"{task} ({mil})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric.replace('test_', '')}_vs_budget_{mil}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130, format="png")
        plt.close(fig)
        written.append(path)
    return written


def write_aggregate(paths: Iterable[str | Path], out_dir: str | Path, metric: str = "test_auroc") -> dict[str, Path]:
    """Collect, aggregate and write aggregate.csv, aggregate.md and the plots into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(collect(paths))
    written: dict[str, Path] = {}
    with atomic_path(out_dir / "aggregate.csv") as tmp:
        agg.to_csv(tmp, index=False, float_format="%.6g")
    written["csv"] = out_dir / "aggregate.csv"
    with atomic_path(out_dir / "aggregate.md") as tmp:
        tmp.write_text(markdown_table(agg))
    written["markdown"] = out_dir / "aggregate.md"
    for p in plot_metric_vs_budget(agg, out_dir, metric):
        written[p.stem] = p
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wsisum.evaluate.aggregate", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="run or sweep directories (searched for metrics.csv) or CSV files")
    ap.add_argument("--out", help="output directory (default: the first directory given)")
    ap.add_argument("--metric", default="test_auroc", help="metric plotted against the budget")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else next((Path(p) for p in args.paths if Path(p).is_dir()), Path("."))
    try:
        written = write_aggregate(args.paths, out, args.metric)
    except InputError as err:
        print_error(err)
        return 1
    print((out / "aggregate.md").read_text(), end="")
    for p in written.values():
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
