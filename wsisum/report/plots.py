"""The report's figures besides heatmaps: metric versus budget (from `wsisum.evaluate.aggregate`,
one PNG per MIL model, a panel per task, a line per sampler, full bags as the dashed reference),
lesion retention versus budget (synthetic cohorts), and the candidate's paired difference to each
baseline versus budget (from `wsisum.evaluate.paired`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsisum.data.atomic import atomic_path
from wsisum.evaluate.aggregate import FULL, plot_metric_vs_budget


def metric_vs_budget(agg: pd.DataFrame, out_dir: Path, metric: str = "test_auroc") -> list[Path]:
    """`<metric>_vs_budget_<mil>.png` per MIL model with summaries at some budget."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_metric_vs_budget(agg, out_dir, metric)


def lesion_retention_plot(
    df: pd.DataFrame, path: Path, dataset_tasks: dict[str, str] | None = None, small: int | None = None
) -> Path | None:
    """A panel per dataset: share of lesion-positive slides whose summary kept a lesion patch, versus
    budget, a line per sampler; dotted, the same for the smallest lesions. None when nothing to plot."""
    sub = df[(df["sampler"] != FULL) & (df["lesion_slides"] > 0)]
    if sub.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(sub["dataset"].unique())
    samplers = sorted(sub["sampler"].unique())
    colours = {s: f"C{i % 10}" for i, s in enumerate(samplers)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rows = sub[sub["dataset"] == ds]
        for sampler, s in rows.groupby("sampler", sort=True):
            s = s.sort_values("budget")
            x = s["budget"].astype(float).to_numpy()
            ax.plot(x, s["hit_rate"], marker="o", color=colours[sampler])
            few = s[s["small_slides"] > 0]
            if not few.empty:
                ax.plot(
                    few["budget"].astype(float).to_numpy(),
                    few["small_hit_rate"],
                    marker="x",
                    linestyle=":",
                    color=colours[sampler],
                )
        budgets = sorted(int(b) for b in rows["budget"].dropna().unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("budget (patches per slide)")
        ax.set_ylabel("share of lesion-positive slides")
        task = (dataset_tasks or {}).get(ds)
        ax.set_title(f"{ds} ({task})" if task else ds, fontsize=10)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[s], marker="o", label=s) for s in samplers]
    handles.append(Line2D([], [], color="black", marker="o", label="a lesion patch kept"))
    if (sub["small_slides"] > 0).any():
        what = f"lesions of ≤ {small} patches" if small else "smallest lesions"
        handles.append(Line2D([], [], color="black", marker="x", linestyle=":", label=f"the same, {what}"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def paired_difference_plot(matrix: pd.DataFrame, path: Path, candidate: str, metric: str = "test_auroc") -> Path | None:
    """A panel per (task, MIL): the candidate's mean paired difference to each baseline versus budget,
    with its bootstrap CI as error bars; above the dotted zero line the candidate is better. None when
    there is nothing to draw (no candidate, or no pair with a CI)."""
    sub = matrix[matrix["n_pairs"] >= 2]
    if sub.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(str(t), str(m)) for t, m in zip(sub["task"], sub["mil"])})
    baselines = sorted(sub["baseline"].unique())
    colours = {b: f"C{i % 10}" for i, b in enumerate(baselines)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (task, mil) in zip(axes[0], panels):
        rows = sub[(sub["task"].astype(str) == task) & (sub["mil"].astype(str) == mil)]
        for base, s in rows.groupby("baseline", sort=True):
            s = s.sort_values("budget")
            dodge = 2 ** (0.05 * (baselines.index(base) - (len(baselines) - 1) / 2))  # error bars side by side
            x = s["budget"].astype(float).to_numpy() * dodge
            y = s["mean_diff"].to_numpy(float)
            err = [(y - s["ci_low"].to_numpy(float)).clip(0), (s["ci_high"].to_numpy(float) - y).clip(0)]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colours[base], label=f"vs {base}")
        ax.axhline(0, color="black", linestyle=":", linewidth=1)
        budgets = sorted(int(b) for b in rows["budget"].dropna().unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("budget (patches per slide)")
        ax.set_ylabel(f"{candidate} − baseline, {metric.replace('test_', 'test ').replace('_', ' ')}")
        ax.set_title(f"{task} ({mil})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
