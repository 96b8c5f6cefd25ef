"""One retrieval run: which slides, which index, every distance searched, metrics and predictions written.

The slides are the task's labelled slides that have a bag (in the task's datasets). Slides whose bag
is bad are skipped and recorded in the run's bad-slide ledger; so is a labelled slide of the cohort
that has no bag in a summary directory (its summary is missing). Labelled slides absent from the
cohort itself are only counted in the log: one labels file often serves several cohorts.

Rows go to `metrics.csv` in `wsisum-evaluate`'s schema with mil = `retrieval_<distance>`, fold 0 and
seed = the subsample seed, so `wsisum.evaluate.aggregate` reads them beside the MIL results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from wsisum.data.atomic import atomic_path
from wsisum.data.bad_slides import BadSlideLedger, check_on_bad
from wsisum.data.cohort import Cohort
from wsisum.data.labels import Labels, read_labels
from wsisum.data.layouts import layout_options
from wsisum.data.tasks import TaskSpec
from wsisum.errors import InputError, positive_int
from wsisum.evaluate.results import FULL, METRICS_FILE, RunLabel, rows_for_fold, write_metrics
from wsisum.retrieve.index import RetrievalIndex, index_path, load_or_build
from wsisum.retrieve.metrics import KS, query_outcomes, retrieval_values
from wsisum.retrieve.search import DISTANCES, SearchResult, search

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "predictions.csv"
FULL_BAG_CAP = 2048  # max_patches_per_slide=auto on full bags; summaries are never capped by auto


@dataclass
class RetrievalResult:
    """What a run produced: one label per distance, the tidy rows, where they were written."""

    labels: dict[str, RunLabel] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    index: RetrievalIndex | None = None

    def value(self, distance: str, metric: str) -> float:
        mil = f"retrieval_{distance}"
        return next((r["value"] for r in self.rows if r["mil"] == mil and r["metric"] == metric), float("nan"))


def task_choice() -> str | None:
    """The `task=` option of the command line, the task's name when its YAML has none."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("task") if HydraConfig.initialized() else None


def resolve_cap(value: object, full: bool) -> int | None:
    """`max_patches_per_slide`: auto (2048 on full bags, no cap on summaries), null (no cap) or K."""
    if value is None or str(value) == "null":
        return None
    if str(value) == "auto":
        return FULL_BAG_CAP if full else None
    return positive_int(value, "max_patches_per_slide")


def resolve_distances(value: object) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = [d for d in names if d not in DISTANCES]
    if unknown or not names:
        raise InputError(None, f"distances={names}: use one or more of {list(DISTANCES)}")
    return [str(d) for d in names]


def _one_value(values: list[str], what: str, where: Path) -> str | None:
    found = sorted({v for v in values if v})
    if len(found) > 1:
        raise InputError(where, f"summary bags mix {what}s {found}")
    return found[0] if found else None


def run_label(cfg: DictConfig, task: TaskSpec, index: RetrievalIndex, used: list[int], bag_dir: Path) -> RunLabel:
    """Sampler and budget of the bags: given, else from the summaries' attrs (as wsisum-evaluate does)."""
    if str(cfg.bags) == FULL:
        if cfg.get("budget") is not None:
            raise InputError(None, f"budget={cfg.budget} applies to summary bags only (bags=DIR), not bags=full")
        return RunLabel(task.name, str(cfg.get("sampler_name") or FULL), None, "retrieval")
    found_s = _one_value([index.samplers[i] for i in used], "sampler", bag_dir)
    found_b = _one_value([index.budgets[i] for i in used], "budget", bag_dir)
    sampler = cfg.get("sampler_name") or found_s or bag_dir.name
    if cfg.get("budget") is not None:
        budget: int | None = positive_int(cfg.budget, "budget")
    else:
        budget = int(found_b) if found_b is not None and found_b.isdigit() else None
    return RunLabel(task.name, str(sampler), budget, "retrieval")


def task_slides(
    cfg: DictConfig, task: TaskSpec, labels: Labels, index: RetrievalIndex, ledger: BadSlideLedger
) -> list[int]:
    """Index positions of the task's labelled, usable slides; bad or missing ones go to the ledger."""
    root = Path(cfg.data.root).expanduser()
    datasets = list(task.datasets or cfg.data.get("datasets") or [])
    bag_dir = None if str(cfg.bags) == FULL else Path(str(cfg.bags))
    Cohort(root, datasets or None, bag_dir=bag_dir, **layout_options(cfg.data))  # the task's datasets exist
    wanted = set(datasets) if datasets else None
    pos = index.position()
    used = [pos[s] for s in labels.label_of if s in pos and (wanted is None or index.datasets[pos[s]] in wanted)]
    for sid, message in index.bad.items():
        if sid in labels.label_of:
            ledger.add(sid, message)
    if bag_dir is not None:  # a labelled slide of the cohort without its summary is a failed summary
        full = Cohort(root, datasets or None, **layout_options(cfg.data))
        for sid in labels.label_of:
            if sid in full and sid not in pos and sid not in index.bad:
                ledger.add(sid, f"{bag_dir}: no summary bag for slide '{sid}' of {full.bag_dir}")
    elsewhere = sum(s not in pos and s not in index.bad for s in labels.label_of)
    if elsewhere:
        log.info("%s: %d labelled slide(s) have no bag here (other cohorts?)", labels.path, elsewhere)
    if len(used) < 2:
        raise InputError(labels.path, f"{len(used)} labelled slide(s) with a usable bag; retrieval needs 2 or more")
    return sorted(used)


def _predictions(result: SearchResult, index: RetrievalIndex, labels: Labels, outcomes: list[dict]) -> list[dict]:
    classes = labels.classes
    rows = []
    for i, p in enumerate(result.slides):
        sid = index.slide_ids[p]
        nb = [result.slides[j] for j in result.neighbours[i] if j >= 0]
        o = outcomes[i]
        row = {"distance": result.distance, "slide_id": sid, "case_id": labels.case_of[sid]}
        row["target"] = classes[labels.label_of[sid]]
        row.update({f"vote_at_{k}": classes[o[f"vote_at_{k}"]] if o else "" for k in KS})
        row["ap_at_5"] = o.get("ap_at_5", float("nan"))
        row["neighbours"] = ";".join(index.slide_ids[j] for j in nb)
        row["neighbour_distances"] = ";".join(f"{d:.6g}" for d in result.distances[i][: len(nb)])
        row["query_time_s"] = float(result.query_time_s[i])
        rows.append(row)
    return rows


def run_retrieval(cfg: DictConfig) -> RetrievalResult:
    """Search every distance of `cfg.distances` and write metrics.csv and predictions.csv.

    faiss runs with `cfg.threads` OpenMP threads (null: its default) for this run only.
    """
    import faiss

    threads = faiss.omp_get_max_threads()
    if cfg.get("threads"):
        faiss.omp_set_num_threads(int(cfg.threads))
    try:
        return _run(cfg)
    finally:
        faiss.omp_set_num_threads(threads)


def _run(cfg: DictConfig) -> RetrievalResult:
    task = TaskSpec.from_config(
        OmegaConf.to_container(cfg.task, resolve=True) if cfg.get("task") else None, cfg.data.root, task_choice()
    )
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise InputError(cfg.data.root, "cohort root not found (set data.root=DIR)")
    if cfg.get("budget") is not None:
        positive_int(cfg.budget, "budget")
    distances = resolve_distances(cfg.distances)
    on_bad = check_on_bad(str(cfg.data.get("on_bad_slide", "skip")))
    full = str(cfg.bags) == FULL
    cap = resolve_cap(cfg.get("max_patches_per_slide"), full)
    labels = read_labels(task.labels, task.classes)
    bag_dir = None if full else Path(str(cfg.bags))
    cohort = Cohort(root, None, bag_dir=bag_dir, **layout_options(cfg.data))  # every dataset: one shared index
    path = index_path(cfg.index_dir, cohort.bag_dir, cap, int(cfg.seed))
    index = load_or_build(cohort, path, cap, int(cfg.seed), on_bad, keep=set(labels.label_of))
    out_dir = Path(cfg.paths.output_dir)
    used = task_slides(cfg, task, labels, index, BadSlideLedger(out_dir, "retrieve"))
    base = run_label(cfg, task, index, used, cohort.bag_dir)
    ids = [index.slide_ids[p] for p in used]
    targets = [labels.label_of[s] for s in ids]
    cases = [labels.case_of[s] for s in ids]
    sizes = [int(index.offsets[p + 1] - index.offsets[p]) for p in used]
    k = max(KS)
    result = RetrievalResult(out_dir=out_dir, index=index)
    predictions: list[dict] = []
    for distance in distances:
        found = search(index, used, cases, distance, k)
        same = np.asarray(targets)[:, None] == np.asarray(targets)[None, :]
        n_relevant = (same & (np.asarray(cases, dtype=object)[:, None] != np.asarray(cases, dtype=object))).sum(1)
        ranked = [[targets[j] for j in row if j >= 0] for row in found.neighbours]
        outcomes = query_outcomes(targets, ranked, n_relevant.tolist())
        values = retrieval_values(targets, outcomes, found.query_time_s.tolist())
        values |= {"patches_per_bag": float(np.mean(sizes)), "patches_per_bag_max": max(sizes)}
        label = RunLabel(base.task, base.sampler, base.budget, f"retrieval_{distance}")
        result.labels[distance] = label
        result.rows.extend(rows_for_fold(label, 0, values, seed=int(cfg.seed)))
        predictions.extend(_predictions(found, index, labels, outcomes))
        log.info(
            "%s (%s): majority vote@5 %.3f, mAP@5 %.3f, %.3g s per query, %d queries",
            label.mil,
            label.sampler,
            values["test_majority_vote_at_5"],
            values["test_map_at_5"],
            values["query_time_s"],
            values["n_test"],
        )
    write_metrics(out_dir / METRICS_FILE, result.rows)
    with atomic_path(out_dir / PREDICTIONS_FILE) as tmp:
        pd.DataFrame(predictions).to_csv(tmp, index=False, float_format="%.6g")
    return result
