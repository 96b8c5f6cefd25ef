"""The report's paired sections, first in the report: the candidate (`wsisum`) against every baseline,
retention of the full-bag result, and the ablation variants against `wsisum`.

The numbers come from `wsisum.evaluate.paired` (the same frames are written as paired.csv,
retention.csv and ablation.csv beside the report); this module only words and lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsisum.evaluate import paired
from wsisum.evaluate.results import FULL
from wsisum.report.render import Figure, Section
from wsisum.report.tables import HEADERS, RETAINED, paired_table, retention_table


@dataclass
class PairedResults:
    """The three paired frames of one run, and what the prose needs to describe them."""

    candidate: str
    metric: str
    matrix: pd.DataFrame
    retention: pd.DataFrame
    ablation: pd.DataFrame
    counts: dict[str, int] = field(default_factory=dict)  # distinct folds and seeds in the results
    has_candidate: bool = False
    has_full: bool = False

    def frames(self) -> dict[str, pd.DataFrame]:
        """CSV name (without .csv) -> frame."""
        return {"paired": self.matrix, "retention": self.retention, "ablation": self.ablation}


def paired_results(df: pd.DataFrame, candidate: str = paired.REFERENCE, metric: str = "test_auroc") -> PairedResults:
    samplers = set(df["sampler"].astype(str))
    return PairedResults(
        candidate=candidate,
        metric=metric,
        matrix=paired.winner_matrix(df, candidate, metric),
        retention=paired.retention(df, metric),
        ablation=paired.ablation(df, candidate, metric),
        counts=paired.replicate_counts(df),
        has_candidate=candidate in samplers,
        has_full=FULL in samplers,
    )


def metric_label(metric: str) -> str:
    name = HEADERS.get(metric, metric.removeprefix("test_").replace("_", " "))
    return f"test {name}" if metric.startswith("test_") else name


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def pairs_range(frame: pd.DataFrame) -> str:
    """How many pairs the cells of a paired frame have: `15`, or `12 to 15` where they differ."""
    n = frame["n_pairs"].astype(int)
    return str(n.min()) if n.min() == n.max() else f"{n.min()} to {n.max()}"


def replicates_line(frame: pd.DataFrame, counts: dict[str, int]) -> str:
    """One line: how many paired replicates each cell has, and what the interval is."""
    many = pairs_range(frame)
    folds, seeds = counts.get("fold", 1), counts.get("seed", 1)
    return (
        f"Each cell pairs {many} (fold, seed) replicates (the results have {_count(folds, 'fold')} × "
        f"{_count(seeds, 'seed')}); "
        f"the CI is a {paired.CONFIDENCE:.0%} percentile bootstrap ({paired.N_RESAMPLES:,} resamples, seeded) "
        "over the paired (fold, seed) replicates."
    )


def verdict_legend(what: str) -> str:
    """What the verdict markers of a paired table mean, `what` being the better side of a win."""
    return (
        f"`▲ win`: the whole CI is above 0 ({what} is better); `▼ loss`: below 0; `= tie`: it straddles 0; "
        "`? n/a`: fewer than 2 paired replicates."
    )


def winner_section(p: PairedResults, fig: Path | None = None) -> Section:
    c, label = p.candidate, metric_label(p.metric)
    sec = Section(f"{c} vs every baseline", "paired")
    if not p.has_candidate:
        sec.blocks.append(f"No `{c}` results in this run: no paired comparison against the baselines.")
        return sec
    if p.matrix.empty:
        sec.blocks.append(f"No baseline sampler was evaluated at a budget of `{c}`: nothing to pair.")
        return sec
    sec.blocks.append(
        f"Each cell: `{c}` minus the column's sampler in {label}, on the same replicates of the same task, "
        f"MIL model and budget: verdict, mean paired difference, its CI, and on how many replicates `{c}` "
        f"scored higher (wins/pairs). {verdict_legend(f'`{c}`')}"
    )
    sec.blocks.append(replicates_line(p.matrix, p.counts))
    sec.blocks.append(paired_table(p.matrix, "baseline"))
    if fig is not None:
        sec.blocks.append(
            Figure(
                fig,
                f"{c} minus each baseline in {label} versus budget, mean paired difference with its "
                f"{paired.CONFIDENCE:.0%} bootstrap CI; above the dotted zero line {c} is better.",
            )
        )
    return sec


def retention_section(p: PairedResults) -> Section:
    label = metric_label(p.metric)
    sec = Section("Retention of the full-bag result", "retention")
    if p.retention.empty:
        why = "no full-bag evaluation" if not p.has_full else "no summary shares a (fold, seed) with the full bags"
        sec.blocks.append(f"No retention: {why}.")
        return sec
    sec.blocks.append(
        f"A summary's {label} divided by the full-bag {label} on the same (fold, seed) replicate, mean over "
        f"replicates with its CI; bold (green in HTML): a mean retention of at least {RETAINED:.2f}."
    )
    sec.blocks.append(replicates_line(p.retention, p.counts))
    sec.blocks.append(retention_table(p.retention))
    return sec


def ablation_section(p: PairedResults) -> Section:
    c, label = p.candidate, metric_label(p.metric)
    sec = Section(f"Ablation: {c}-* variants vs {c}", "ablation")
    sec.blocks.append(
        f"Each cell: the column's variant minus `{c}` in {label}, paired as above: a `loss` means the variant "
        f"is worse, so what it changes matters. {verdict_legend('the variant')}"
    )
    sec.blocks.append(replicates_line(p.ablation, p.counts))
    sec.blocks.append(paired_table(p.ablation, "candidate"))
    return sec


def paired_sections(p: PairedResults | None, fig: Path | None = None) -> list[Section]:
    """Winner matrix (with its figure) and retention when there are results, and the ablation when
    variants are present."""
    if p is None:
        return []
    out = [winner_section(p, fig), retention_section(p)]
    if not p.ablation.empty:
        out.append(ablation_section(p))
    return out
