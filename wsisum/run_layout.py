"""The folder and file names of a study's run directory: every stage that writes or reads one uses these.

    RUN_DIR/study.json                                         the study's config, stage outcomes, timings
    RUN_DIR/.stages/<stage key>.json                           a finished stage's marker (`wsisum.pipeline.study`)
    RUN_DIR/train[/<variant>]/checkpoints/{best-*,last}.ckpt   pretraining (recipe.json: its fingerprint)
    RUN_DIR/summaries/<sampler>_<budget>/<dataset>/<slide_id>.h5
    RUN_DIR/evaluate/<task>/<sampler>_<budget>/metrics.csv     (and evaluate/<task>/full/metrics.csv)
    RUN_DIR/retrieve/<task>/<sampler>_<budget>/metrics.csv
    RUN_DIR/results.csv, RUN_DIR/retrieval.csv                 every metrics.csv of evaluate/, retrieve/
    RUN_DIR/cache/clusters/, RUN_DIR/cache/retrieval/          what later runs reuse (clusterings, indexes)
    RUN_DIR/logs/<app>/<label>/                                a stage's Hydra run dir when it has no other
    RUN_DIR/report/report.{md,html}

Names only (no imports), so the lowest stage may use them: `sampling` names the clustering cache,
`report` reads the run dir, the pipeline writes it.
"""

from __future__ import annotations

from pathlib import Path

STUDY_FILE = "study.json"
STAGES_DIR = ".stages"
TRAIN_DIR = "train"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT_PREFIX = "best-"
RECIPE_FILE = "recipe.json"
SUMMARIES_DIR = "summaries"
EVALUATE_DIR = "evaluate"
RESULTS_FILE = "results.csv"
RETRIEVE_DIR = "retrieve"
RETRIEVAL_FILE = "retrieval.csv"
CACHE_DIR = "cache"
CLUSTERS_DIR = "clusters"  # under a stage's cache_dir: one folder of clusterings for the whole study
RETRIEVAL_CACHE_DIR = "retrieval"  # under cache_dir: the retrieval indexes
LOGS_DIR = "logs"
REPORT_DIR = "report"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def stage_marker(run_dir: str | Path, key: str) -> Path:
    """The marker of stage `key` (`summarize/kmeans_64` -> `.stages/summarize__kmeans_64.json`)."""
    return Path(run_dir) / STAGES_DIR / (key.replace("/", "__") + ".json")


def summary_set_name(sampler: str, budget: int | str | None) -> str:
    """`<sampler>_<budget>`, `<sampler>_auto` for summaries that size themselves (budget None or 'auto')."""
    return f"{sampler}_{'auto' if budget is None else budget}"


def parse_summary_set_name(name: str) -> tuple[str, int | None] | None:
    """(sampler, budget) of a folder named `<sampler>_<budget>` (budget None for `auto`); None otherwise."""
    sampler, _, budget = name.rpartition("_")
    if sampler and (budget.isdigit() or budget == "auto"):
        return sampler, None if budget == "auto" else int(budget)
    return None


def checkpoint_dir(train_dir: str | Path) -> Path:
    return Path(train_dir) / CHECKPOINTS_DIR


def last_checkpoint(train_dir: str | Path) -> Path:
    return checkpoint_dir(train_dir) / LAST_CHECKPOINT


def chosen_checkpoint(train_dir: str | Path) -> Path:
    """The pretrained summarizer a study uses: the last `best-*.ckpt` by name, else `last.ckpt`
    (which may not exist yet: the path the training will write)."""
    best = sorted(checkpoint_dir(train_dir).glob(BEST_CHECKPOINT_PREFIX + "*.ckpt"))
    return best[-1] if best else last_checkpoint(train_dir)
