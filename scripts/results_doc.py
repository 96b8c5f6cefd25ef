"""The quality tables of the docs, generated from a study's report (never typed by hand).

    python scripts/results_doc.py RUN_DIR [--tuned TASK ...] [--parts stages tables goals ablation]
                                  [--title COMMAND] [--out FILE --section NAME]

RUN_DIR is a `wsisum-pipeline` run dir (e.g. outputs/pipeline/worlds) whose report has been written.
For every task x sampler x budget it prints ABMIL test AUROC (mean over the paired replicates),
wsisum minus the sampler with its bootstrap 95 % CI and verdict, and, where the cohort carries
per-patch truth, lesion any-hit, tumour share of the summary relative to the slide's, and artifact
share relative to the slide's; then the goals of the held-out protocol per task, each marked met or
not. `--tuned` names the tasks the default was tuned on (marked in the tables, left out of the goals).
With `--out FILE --section NAME` the tables replace the block between `<!-- results:NAME -->` and
`<!-- /results:NAME -->` in FILE (docs/results.md, docs/worlds.md), so a fresh run regenerates the docs.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

REFERENCE = "wsisum"
AUROC = "test_auroc"
TASK_CONFIGS = Path(__file__).resolve().parents[1] / "wsisum" / "configs" / "task"
GOALS = "no significant loss; retention >= 0.95 at 64; lesion any-hit >= 0.95 at 64; artifacts <= slide; tumour >= 0.75 x slide"


def task_dataset(task: str) -> str:
    """The dataset a task reads (its config's first `datasets` entry): lesion truth is per dataset."""
    path = TASK_CONFIGS / f"{task}.yaml"
    return str(OmegaConf.load(path).datasets[0]) if path.is_file() else task


def read(run: Path, name: str) -> pd.DataFrame:
    path = run / "report" / name
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def fmt(value: float, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def diff_cell(row: pd.Series | None) -> str:
    if row is None:
        return ""
    sign = {"win": "**win**", "loss": "**LOSS**"}.get(str(row["verdict"]), "tie")
    return f"{sign} {row['mean_diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def truth_cells(lesions: pd.DataFrame, dataset: str, sampler: str, budget: int) -> dict[str, float]:
    """Any-hit, tumour share / slide share, artifact share / slide share of one summary set."""
    if lesions.empty:
        return {}
    r = lesions[(lesions["dataset"] == dataset) & (lesions["sampler"] == sampler) & (lesions["budget"] == budget)]
    if r.empty:
        return {}
    r = r.iloc[0]
    out = {"hit": r["hit_rate"], "tumour": r["kept_lesion_fraction"] / r["full_lesion_fraction"]}
    if "kept_artifact_fraction" in r and r["full_artifact_fraction"] > 0:
        out["artifact"] = r["kept_artifact_fraction"] / r["full_artifact_fraction"]
    return out


def task_table(task: str, results: pd.DataFrame, paired: pd.DataFrame, lesions: pd.DataFrame, tuned: bool) -> list[str]:
    auroc = results[(results["task"] == task) & (results["metric"] == AUROC)]
    mean = auroc.groupby(["sampler", "budget"], dropna=False)["value"].mean()
    full = auroc[auroc["sampler"] == "full"]["value"].mean()
    budgets = sorted(int(b) for b in auroc["budget"].dropna().unique())
    samplers = sorted(s for s in auroc["sampler"].unique() if s != "full")
    samplers = [REFERENCE] + [s for s in samplers if s != REFERENCE]
    head = ["sampler"]
    for b in budgets:
        head += [f"AUROC {b}", f"wsisum − it, {b}"]
    at = 64 if 64 in budgets else budgets[-1]  # the budget of the truth columns (the goals' budget)
    dataset = task_dataset(task)
    has_artifacts = (
        "full_artifact_fraction" in lesions
        and (lesions.loc[lesions["dataset"] == dataset, "full_artifact_fraction"].fillna(0) > 0).any()
    )
    truth_heads = [f"any-hit {at}", f"tumour share {at}"] + ([f"artifact share {at}"] if has_artifacts else [])
    head += truth_heads
    mark = " (tuned on)" if tuned else " (held out)"
    lines = [f"#### {task}{mark}: full bags {fmt(full)}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    for s in samplers:
        cells = [s]
        for b in budgets:
            cells.append(fmt(mean.get((s, b), math.nan)))
            p = paired[(paired["task"] == task) & (paired["budget"] == b) & (paired["baseline"] == s)]
            cells.append(diff_cell(p.iloc[0]) if len(p) and s != REFERENCE else "")
        t = truth_cells(lesions, dataset, s, at)
        cells += [fmt(t.get(k, math.nan), 2) for k in ("hit", "tumour", "artifact")][: len(truth_heads)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def goals(task: str, paired: pd.DataFrame, retention: pd.DataFrame, lesions: pd.DataFrame) -> str:
    """One line: each goal of the held-out protocol on this task, met or not, with its figure."""
    p = paired[(paired["task"] == task) & ~paired["baseline"].astype(str).str.startswith(f"{REFERENCE}-")]
    losses = p[p["verdict"] == "loss"]
    wins = int((p["verdict"] == "win").sum())
    parts = [f"{len(losses)} significant losses, {wins} wins in {len(p)} comparisons with every sampler"]
    if len(losses):
        parts[0] += " (" + ", ".join(f"{r.baseline}@{r.budget}" for r in losses.itertuples()) + ")"
    r = retention[(retention["task"] == task) & (retention["sampler"] == REFERENCE) & (retention["budget"] == 64)]
    if len(r):
        value = float(r.iloc[0]["retention"])
        parts.append(f"retention@64 {value:.3f} {'met' if value >= 0.95 else 'NOT met'}")
    t = truth_cells(lesions, task_dataset(task), REFERENCE, 64)
    if "hit" in t and not math.isnan(t["hit"]):
        parts.append(f"any-hit@64 {t['hit']:.2f} {'met' if t['hit'] >= 0.95 else 'NOT met'}")
    if "tumour" in t and not math.isnan(t["tumour"]):
        parts.append(f"tumour share@64 {t['tumour']:.2f} {'met' if t['tumour'] >= 0.75 else 'NOT met'}")
    if "artifact" in t:
        parts.append(f"artifact share@64 {t['artifact']:.2f} {'met' if t['artifact'] <= 1.0 else 'NOT met'}")
    return f"- **{task}**: " + "; ".join(parts)


def ablation_table(ablation: pd.DataFrame) -> list[str]:
    """Each variant minus wsisum per task and budget: mean paired AUROC difference and verdict."""
    a = ablation[ablation["metric"] == AUROC] if len(ablation) else ablation
    if a.empty:
        return []
    cols = sorted({(t, int(b)) for t, b in zip(a["task"], a["budget"])})
    head = ["variant − wsisum"] + [f"{t} {b}" for t, b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in sorted(a["candidate"].unique()):
        cells = [f"`{variant}`"]
        for t, b in cols:
            r = a[(a["candidate"] == variant) & (a["task"] == t) & (a["budget"] == b)]
            cells.append(f"{r.iloc[0]['mean_diff']:+.3f} {r.iloc[0]['verdict']}" if len(r) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def stage_times(run: Path) -> list[str]:
    """Seconds per kind of stage (cohort, train, summarize, evaluate, retrieve) from the study's
    study.json, and their sum (the report, written after them, is not in it)."""
    import json

    timings = json.loads((run / "study.json").read_text()).get("timings_s", {})
    kinds: dict[str, float] = {}
    for key, seconds in timings.items():
        kinds[key.split("/")[0]] = kinds.get(key.split("/")[0], 0.0) + float(seconds)
    cells = [f"{k} {v / 60:.1f} min" for k, v in kinds.items()]
    total = sum(kinds.values())
    return [f"Stage times: {', '.join(cells)}; **{total / 60:.1f} min** in all before the report.", ""]


def document(run: Path, tuned: set[str], title: str, parts: set[str]) -> str:
    results = pd.read_csv(run / "results.csv")
    paired = read(run, "paired.csv")
    paired = paired[(paired["candidate"] == REFERENCE) & (paired["metric"] == AUROC)] if len(paired) else paired
    retention = read(run, "retention.csv")
    lesions = read(run, "lesion_retention.csv")
    tasks = sorted(results["task"].unique())
    lines = [f"Generated by `python scripts/results_doc.py` from the report of `{title}`.", ""]
    if "stages" in parts:
        lines += stage_times(run)
    if "tables" in parts:
        for task in tasks:
            lines += task_table(task, results, paired, lesions, task in tuned)
    held = [t for t in tasks if t not in tuned]
    if "goals" in parts and held:
        lines += [f"Goals on the held-out tasks ({GOALS}):", ""]
        lines += [*[goals(t, paired, retention, lesions) for t in held], ""]
    if "ablation" in parts:
        lines += ablation_table(read(run, "ablation.csv"))
    return "\n".join(lines)


def replace_section(path: Path, section: str, text: str) -> None:
    start, end = f"<!-- results:{section} -->", f"<!-- /results:{section} -->"
    doc = path.read_text()
    if start not in doc or end not in doc:
        raise SystemExit(f"error: {path}: no block {start} ... {end} to fill")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", doc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--tuned", nargs="*", default=[], help="tasks the default was tuned on")
    ap.add_argument("--title", default="wsisum-pipeline", help="the study's command, named in the text")
    ap.add_argument(
        "--parts", nargs="+", default=["tables", "goals", "ablation"], choices=["stages", "tables", "goals", "ablation"]
    )
    ap.add_argument("--out", type=Path)
    ap.add_argument("--section")
    args = ap.parse_args()
    text = document(args.run, set(args.tuned), args.title, set(args.parts))
    if args.out is not None:
        replace_section(args.out, args.section or args.run.name, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
