"""`wsisum-pipeline [experiment=demo]`: cohort -> pretraining -> summaries -> evaluation -> report.

Every stage is the same function its own console script runs, so each is also runnable alone;
finished stages are reused on a re-run (see `wsisum.pipeline.study`); the run dir's names are
`wsisum.run_layout`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.console import batch_console
from wsisum.data.bad_slides import LEDGER_FILE, runs_with_bad_slides
from wsisum.data.ground_truth import MANIFEST_NAME
from wsisum.data.markers import FINGERPRINT, fingerprint, recorded_fingerprint, write_marker
from wsisum.data.output_faults import check_writable
from wsisum.errors import print_error
from wsisum.evaluate.results import METRICS_FILE
from wsisum.pipeline.study import Study, compose_stage, console, remove
from wsisum.progress import study_display
from wsisum.report.rundir import stage_metrics
from wsisum.run_layout import (
    CACHE_DIR,
    CLUSTERS_DIR,
    EVALUATE_DIR,
    LOGS_DIR,
    RECIPE_FILE,
    RESULTS_FILE,
    RETRIEVAL_CACHE_DIR,
    RETRIEVAL_FILE,
    RETRIEVE_DIR,
    SUMMARIES_DIR,
    TRAIN_DIR,
    chosen_checkpoint,
    last_checkpoint,
    summary_set_name,
)
from wsisum.runlock import run_lock

log = logging.getLogger(__name__)


def data_overrides(cfg: DictConfig, root: Path) -> list[str]:
    """Where every stage finds the cohort: its root and, for CLAM/TRIDENT folders, their layout."""
    out = [f"data.root={root}", f"data.layout={cfg.cohort.get('layout') or 'auto'}"]
    return out + ([f"data.encoder={cfg.cohort.encoder}"] if cfg.cohort.get("encoder") else [])


def stage_cohort(study: Study, cfg: DictConfig, root: Path) -> list[str]:
    if not cfg.cohort.preset:
        from wsisum.data.cohort import Cohort

        Cohort(root, layout=cfg.cohort.get("layout") or "auto", encoder=cfg.cohort.get("encoder"))  # one line if none
        return []
    from wsisum.apps.synth import synth

    scfg = compose_stage("synth", [f"preset={cfg.cohort.preset}", f"out_dir={root}", f"seed={cfg.seed}"])
    recipe = {"preset": OmegaConf.to_container(scfg.preset), "seed": cfg.seed, "root": str(root)}
    study.run("cohort", recipe, lambda: synth(scfg), outputs=[root / MANIFEST_NAME])
    return ["cohort"]


def stage_train(study: Study, cfg: DictConfig, root: Path, upstream: list[str], variant: str | None = None) -> Path:
    """Pretrain the study's summarizer (or, for an ablation variant with `train_overrides`, its own one)."""
    from wsisum.apps.train import train

    key = TRAIN_DIR if variant is None else f"{TRAIN_DIR}/{variant}"
    train_dir = study.run_dir / key
    extra = [] if variant is None else list(cfg.summarize.variants[variant].get("train_overrides") or [])
    overrides = [
        *data_overrides(cfg, root),
        f"paths.output_dir={train_dir}",
        f"pool.cache_dir={study.run_dir / CACHE_DIR / CLUSTERS_DIR}",
        f"seed={cfg.seed}",
        *cfg.pool_overrides,  # the pool is one config for pretraining and the search summary
        *cfg.train.overrides,
        *extra,
    ]
    tcfg = compose_stage("train", overrides)
    recipe_file = train_dir / RECIPE_FILE
    fp = fingerprint(tcfg)
    last = last_checkpoint(train_dir)

    def run() -> None:
        # an interrupted run of the same recipe resumes from its last checkpoint
        run_cfg = tcfg
        if last.exists() and recorded_fingerprint(recipe_file) == fp:
            console.print(f"resuming pretraining from {last}")
            run_cfg = compose_stage("train", [*overrides, f"ckpt_path={last}"])
        write_marker(recipe_file, {FINGERPRINT: fp})
        train(run_cfg)

    study.run(key, tcfg, run, upstream, outputs=[last], clean=remove(train_dir))
    return chosen_checkpoint(train_dir)


def summary_recipes(cfg: DictConfig) -> list[tuple[str, str, list[str]]]:
    """(label, sampler config, overrides) for every sampler and every ablation variant of the study.

    A variant (`summarize.variants.<name>`) is a sampler config plus overrides, labelled `<name>`
    in its summaries and metrics, so the report can pair it with the sampler it ablates; with
    `train_overrides` it also gets its own pretrained summarizer (e.g. without budget-aware masks).
    """
    out = [(s, s, list(cfg.summarize.overrides.get(s) or [])) for s in cfg.summarize.samplers]
    variants = cfg.summarize.get("variants") or {}
    for name in cfg.summarize.get("ablations") or []:
        if name not in variants:
            from wsisum.errors import InputError

            raise InputError(None, f"summarize.ablations names {name!r}, which summarize.variants does not define")
        base = str(variants[name].sampler)
        extra = [*list(cfg.summarize.overrides.get(base) or []), *list(variants[name].get("overrides") or [])]
        out.append((name, base, extra))  # named by stage_summaries' sampler_name=<name>
    return out


def loads_model(scfg: DictConfig) -> bool:
    """Whether this summary recipe's sampler scores with the pretrained summarizer (`Sampler.loads_model`)."""
    return bool(get_class(scfg.sampler._target_).loads_model(scfg.sampler))


def stage_summaries(
    study: Study, cfg: DictConfig, root: Path, pretrained: Callable[[str | None], Path], upstream: list[str]
) -> dict[str, Path]:
    """Every sampler and variant at every budget. `pretrained(variant)` runs (or reuses) the study's
    pretraining stage (None) or a variant's own, and is called only for a recipe whose sampler loads
    the model, so the others never wait for it."""
    from wsisum.apps.summarize import summarize

    made = {}
    variants = cfg.summarize.get("variants") or {}
    for name, sampler, extra in summary_recipes(cfg):
        own_model = name if name in variants and variants[name].get("train_overrides") else None
        budgets = cfg.summarize.budgets
        if name in variants and cfg.summarize.get("ablation_budgets"):
            budgets = cfg.summarize.ablation_budgets  # ablations may run at fewer budgets than the samplers
        for budget in budgets:
            label = summary_set_name(name, budget)
            out = study.run_dir / SUMMARIES_DIR / label
            overrides = [
                *data_overrides(cfg, root),
                f"sampler={sampler}",
                f"sampler_name={name}",
                f"budget={budget}",
                f"out_dir={out}",
                f"workers={cfg.summarize.workers}",
                f"seed={cfg.seed}",
                f"cache_dir={study.run_dir / CACHE_DIR}",
                f"paths.output_dir={study.run_dir / LOGS_DIR / 'summarize' / label}",
                *cfg.pool_overrides,
                *extra,
            ]
            needs = list(upstream)
            scfg = compose_stage("summarize", overrides)
            if str(budget) == "auto" and not get_class(scfg.sampler._target_).auto_size:
                continue  # budget=auto is for the samplers that size their own summaries (mosaic, sdm, splice)
            if loads_model(scfg):
                scfg = compose_stage("summarize", [*overrides, f"sampler.ckpt_path={pretrained(own_model)}"])
                needs.append(TRAIN_DIR if own_model is None else f"{TRAIN_DIR}/{own_model}")
            study.run(f"summarize/{label}", scfg, lambda c=scfg: summarize(c), needs, outputs=[out], clean=remove(out))
            made[label] = out
    return made


BagRun = tuple[str, str, list[str], list[str]]  # label, bags (full or a summary dir), extra overrides, upstream


def summary_labels(label: str) -> list[str]:
    """The metrics labels of a summary set `<sampler>_<budget>`; an `auto` set has no one budget (its
    bags' sizes vary per slide, and each records `n_kept`)."""
    sampler, budget = label.rsplit("_", 1)
    return [f"sampler_name={sampler}"] + ([] if budget == "auto" else [f"budget={budget}"])


def bag_runs(
    full: list[str] | None,
    upstream: list[str],
    summaries: dict[str, Path],
    keep: Callable[[str], bool] | None = None,
) -> list[BagRun]:
    """The full bags (with `full` as their extra overrides; None: not run) and each summary set that
    `keep` keeps (every one without it)."""
    runs: list[BagRun] = [] if full is None else [("full", "full", list(full), list(upstream))]
    for label, out in summaries.items():
        if keep is None or keep(label):
            runs.append((label, str(out), summary_labels(label), [f"summarize/{label}"]))
    return runs


def run_per_task(
    study: Study,
    app: str,
    task_fn: Callable[[DictConfig], Any],
    data: list[str],
    tasks: Sequence[str],
    runs: list[BagRun],
    options: list[str],
    tail: list[str],
) -> None:
    """One stage `<app>/<task>/<label>` per task and bag set (evaluate, retrieve: the run dir's
    `EVALUATE_DIR`, `RETRIEVE_DIR` are named after them): the app's config from `options`, the run's
    extra overrides and then `tail`; its metrics.csv is the stage's output."""
    run = report_input_errors(task_fn)
    for task in tasks:
        for label, bags, extra, needs in runs:
            out = study.run_dir / app / task / label
            overrides = [*data, f"task={task}", f"bags={bags}", *options, f"paths.output_dir={out}"]
            acfg = compose_stage(app, [*overrides, *extra, *tail])
            study.run(
                f"{app}/{task}/{label}",
                acfg,
                lambda c=acfg: run(c),
                needs,
                outputs=[out / METRICS_FILE],
                clean=remove(out),
            )


def stage_evaluate(study: Study, cfg: DictConfig, root: Path, summaries: dict[str, Path], upstream: list[str]) -> None:
    from wsisum.apps.evaluate import evaluate

    runs = bag_runs([] if cfg.evaluate.full_bags else None, upstream, summaries)
    folds = "[" + ",".join(str(int(f)) for f in cfg.evaluate.folds) + "]"
    engine = cfg.evaluate.get("engine")  # null: wsisum-evaluate's own default
    seeds = cfg.evaluate.get("seeds")
    seeds = [cfg.seed] if seeds is None else list(seeds)
    seeds_arg = "[" + ",".join(str(int(s)) for s in seeds) + "]"
    if engine != "replicas" and len(seeds) > 1:  # only replicas trains several seeds: fail before any stage
        from wsisum.errors import InputError

        raise InputError(None, f"evaluate.seeds={seeds} needs evaluate.engine=replicas (not {engine or 'null'})")
    options = [
        f"mil={cfg.evaluate.mil}",
        f"folds={folds}",
        *([f"engine={engine}"] if engine else []),
        f"seed={int(seeds[0])}",
        f"seeds={seeds_arg}",
    ]
    run_per_task(
        study,
        "evaluate",
        evaluate,
        data_overrides(cfg, root),
        cfg.evaluate.tasks,
        runs,
        options,
        list(cfg.evaluate.overrides),
    )


def stage_retrieve(study: Study, cfg: DictConfig, root: Path, summaries: dict[str, Path], upstream: list[str]) -> None:
    """Slide retrieval (leave-one-case-out) on every summary set and the full bags, per task: the
    second use of a summary beside MIL training, on the same bags."""
    from wsisum.apps.retrieve import retrieve

    rcfg = cfg.get("retrieve") or {}
    if not rcfg.get("enabled", False):
        return
    budgets = None if rcfg.get("budgets") is None else {str(b) for b in rcfg.budgets}
    variants = set(cfg.summarize.get("variants") or {})

    def keep(label: str) -> bool:
        sampler, budget = label.rsplit("_", 1)
        return (budgets is None or budget in budgets) and (sampler not in variants or rcfg.get("ablations", False))

    full = list(rcfg.get("full_overrides") or []) if rcfg.get("full_bags", True) else None
    runs = bag_runs(full, upstream, summaries, keep)
    options = [f"seed={cfg.seed}", f"index_dir={study.run_dir / CACHE_DIR / RETRIEVAL_CACHE_DIR}"]
    tasks = rcfg.get("tasks") or cfg.evaluate.tasks
    run_per_task(
        study, "retrieve", retrieve, data_overrides(cfg, root), tasks, runs, options, list(rcfg.get("overrides") or [])
    )


def stage_report(cfg: DictConfig, run_dir: Path, plain: dict) -> None:
    from wsisum.report import annotation_options, build_report

    paths = build_report(run_dir, **annotation_options(cfg.report))
    console.print(f"report: {paths.get('html', paths.get('markdown'))}")
    if cfg.report.wandb.enabled:
        from wsisum.report.wandb_export import export_to_wandb

        wb = export_to_wandb(
            run_dir,
            paths,
            project=cfg.report.wandb.project,
            group=str(cfg.study_name),
            name=f"{cfg.study_name}-report",
            offline=bool(cfg.report.wandb.offline),
            config=plain,
        )
        console.print(f"W&B run: {wb} (offline: `wandb sync {wb}` uploads it)")


def stage_check(cfg: DictConfig, root: Path) -> None:
    """`wsisum-check` on the cohort and each task before the first long stage: a cohort that a later
    stage would fail on stops the study now, with every problem listed, not hours into it."""
    from wsisum.apps.check import run_check

    problems: dict[str, bool] = {}  # one line per problem, in order, once (the bags are shared by the tasks)
    n_slides = 0
    for task in cfg.evaluate.tasks:
        report = run_check(compose_stage("check", [*data_overrides(cfg, root), f"task={task}", "progress=false"]))
        n_slides = report.n_slides
        for p in report.problems:
            problems.setdefault(p.line(), p.fatal)
    fatal = [line for line, is_fatal in problems.items() if is_fatal]
    for line, is_fatal in problems.items():
        if is_fatal:
            print_error(line, prefix=None)
        else:
            log.warning(line)
    if fatal:
        print_error(f"{len(fatal)} problem(s) in the cohort {root}; a later stage would fail")
        raise SystemExit(1)
    warnings = len(problems) - len(fatal)
    Study.say(f"[green]checked[/green] cohort: {n_slides} slides" + (f", {warnings} warning(s)" if warnings else ""))


def run_stages(study: Study, cfg: DictConfig, root: Path) -> None:
    up = stage_cohort(study, cfg, root)
    if not study.planning:
        stage_check(cfg, root)
    trained: dict[str | None, Path] = {}

    def pretrained(variant: str | None) -> Path:  # each pretraining at most once, only when a summary loads it
        if variant not in trained:
            trained[variant] = stage_train(study, cfg, root, up, variant=variant)
        return trained[variant]

    summaries = stage_summaries(study, cfg, root, pretrained, up)
    if not trained and not study.planning:
        study.say("[dim]skipped[/dim] pretraining: no sampler or variant of this study loads the summarizer")
    stage_evaluate(study, cfg, root, summaries, up)
    stage_retrieve(study, cfg, root, summaries, up)


@report_input_errors
def pipeline(cfg: DictConfig) -> Study:
    with run_lock(run_dir := check_writable(cfg.run_dir, "study directory")):  # a second study: one line
        root = Path(cfg.cohort.root)
        study = Study(run_dir)
        console.print(f"[bold]wsisum study[/bold] '{cfg.study_name}' in {run_dir} (cohort {root})")
        with batch_console(bool(cfg.get("verbose", False))):
            plan = Study(run_dir, planning=True)  # a dry pass that only counts the stages, for the display's ETA
            run_stages(plan, cfg, root)
            with study_display(console, len(plan.planned)) as advance:
                study.advance = advance
                run_stages(study, cfg, root)
            results = stage_metrics(run_dir, EVALUATE_DIR, RESULTS_FILE)
            stage_metrics(run_dir, RETRIEVE_DIR, RETRIEVAL_FILE)
            plain = OmegaConf.to_container(cfg, resolve=True)
            study.write_summary(plain)
            if cfg.report.enabled and results is not None:
                stage_report(cfg, run_dir, plain)
        _print_stages(study)
        failed = [k for k, r in study.results.items() if r.status == "failed"]
        if failed:
            print_error(f"{len(failed)} stage(s) failed: {', '.join(failed)}", prefix=None)
        partial = runs_with_bad_slides(study.run_dir, f"**/{LEDGER_FILE}")  # stages that ran without some slides
        for stage, n in partial:
            name = stage.relative_to(study.run_dir)
            print_error(f"stage {name} skipped {n} bad slide(s), listed in {stage / LEDGER_FILE}", prefix=None)
        if failed or partial:
            raise SystemExit(1)
        return study


def _print_stages(study: Study) -> None:
    """One row per kind of stage (each stage already had its line): counts by status and time."""
    table = Table(title="stages")
    for col in ("stages", "ran", "reused", "failed", "seconds"):
        table.add_column(col, justify="left" if col == "stages" else "right")
    groups: dict[str, list] = {}
    for key, r in study.results.items():
        groups.setdefault(key.split("/")[0], []).append(r)
    for name, rs in groups.items():
        counts = [sum(r.status == s for r in rs) for s in ("ran", "reused", "failed")]
        failed = f"[red]{counts[2]}[/red]" if counts[2] else "0"
        table.add_row(name, str(counts[0]), str(counts[1]), failed, f"{sum(r.seconds for r in rs):.1f}")
    console.print(table)


@hydra_app("pipeline")
def main(cfg: DictConfig) -> None:
    pipeline(cfg)


if __name__ == "__main__":
    main()
