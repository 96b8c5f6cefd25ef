"""Cohort plan: labels, cases and slide sizes, and the case-level splits.

Cheap and decided before any slide is drawn, from (seed, dataset) only, so a resumed run knows every
slide id and path up front and the splits never depend on which slides were already written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsisum.data.synthetic.seeds import stream_rng
from wsisum.data.synthetic.spec import DatasetSpec, Preset


@dataclass(frozen=True)
class SlidePlan:
    """Everything about a slide that is fixed before it is drawn."""

    dataset: str
    index: int
    slide_id: str
    case_id: str
    case_index: int
    label: str
    label_index: int
    n_patches: int


def n_paired_cases(n_slides: int, fraction: float) -> int:
    """Cases with 2 slides such that they are `fraction` of all cases."""
    return min(n_slides // 2, int(round(fraction * n_slides / (1.0 + fraction))))


def largest_remainder(fractions: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to `total` closest to `fractions * total` (Hamilton apportionment)."""
    raw = np.asarray(fractions) * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _draw_sizes(spec: DatasetSpec, rng: np.random.Generator) -> np.ndarray:
    lo, hi = spec.n_patches
    n = spec.n_slides
    if spec.n_patches_dist == "uniform":
        return rng.integers(lo, hi + 1, size=n)
    if spec.n_patches_dist == "loguniform":
        return np.round(np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))).astype(int)
    # logspace: both ends present (e.g. the 100k-patch slide of the `large` benchmark), random order
    return rng.permutation(np.round(np.geomspace(lo, hi, n)).astype(int))


def plan_dataset(spec: DatasetSpec, preset: Preset, seed: int) -> list[SlidePlan]:
    """Labels, case grouping and slide sizes of one dataset, from (seed, dataset) only.

    Labels are assigned to cases (patients); ~`paired_case_fraction` of cases get 2 slides with the
    same label, so splits must be made per case.
    """
    rng = stream_rng(seed, spec.name, "plan")
    n_pairs = n_paired_cases(spec.n_slides, preset.paired_case_fraction)
    n_cases = spec.n_slides - n_pairs
    case_labels = rng.permutation(
        np.repeat(np.arange(len(spec.classes)), largest_remainder(spec.class_fractions, n_cases))
    )
    per_case = np.ones(n_cases, dtype=int)
    per_case[rng.choice(n_cases, size=n_pairs, replace=False)] = 2
    sizes = _draw_sizes(spec, rng)
    width = max(4, len(str(spec.n_slides)))
    plans, i = [], 0
    for c in range(n_cases):
        for _ in range(per_case[c]):
            lab = int(case_labels[c])
            plans.append(
                SlidePlan(
                    dataset=spec.name,
                    index=i,
                    slide_id=f"SYN-{spec.prefix}-{i + 1:0{width}d}",
                    case_id=f"SYN-{spec.prefix}-P{c + 1:0{width}d}",
                    case_index=c,
                    label=spec.classes[lab],
                    label_index=lab,
                    n_patches=int(sizes[i]),
                )
            )
            i += 1
    return plans


def make_splits(
    plans: Sequence[SlidePlan], n_folds: int, val_fraction: float, rng: np.random.Generator
) -> list[dict[str, list[str]]]:
    """Case-level stratified k-fold: test = fold k, val = `val_fraction` of the rest per class.

    Cases are dealt round-robin per class (shuffled), so every class is in every test fold when it
    has at least `n_folds` cases; a case's slides always land in the same partition.
    """
    case_label = {p.case_index: p.label_index for p in plans}
    fold_of: dict[int, int] = {}
    offset = 0
    for lab in sorted(set(case_label.values())):
        cases = rng.permutation([c for c, y in case_label.items() if y == lab])
        for j, c in enumerate(cases):
            fold_of[int(c)] = (offset + j) % n_folds
        offset += len(cases)  # continue the deal where the last class stopped: balanced fold sizes
    out = []
    for k in range(n_folds):
        test = {c for c, f in fold_of.items() if f == k}
        val: set[int] = set()
        for lab in sorted(set(case_label.values())):
            rest = rng.permutation(sorted(c for c, y in case_label.items() if y == lab and c not in test))
            n_val = int(round(val_fraction * len(rest)))
            if n_val == 0 and val_fraction > 0 and len(rest) >= 3:
                n_val = 1
            val.update(int(c) for c in rest[:n_val])
        part = {"train": [], "val": [], "test": []}
        for p in plans:
            name = "test" if p.case_index in test else "val" if p.case_index in val else "train"
            part[name].append(p.slide_id)
        out.append(part)
    return out
