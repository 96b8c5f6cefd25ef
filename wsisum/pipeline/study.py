"""The whole study as resumable stages: cohort -> pretraining -> summaries -> evaluation -> report.

Each stage runs one app (the same function its console script calls) on a config composed from
that app's primary config plus the study's overrides. A stage that finished is reused only when
its fingerprint — its resolved config plus the fingerprints of the stages it reads — is unchanged;
otherwise it is recomputed, so a re-run never mixes old outputs with a new recipe. Fingerprints and
markers are `wsisum.data.markers`'; where they live, `wsisum.run_layout`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig
from rich.console import Console

from wsisum.console import capture_stdout, is_batch
from wsisum.data.atomic import atomic_path
from wsisum.data.markers import FINGERPRINT, fingerprint, read_marker, write_marker
from wsisum.errors import EXIT_DISK_FULL
from wsisum.run_layout import STAGES_DIR, STUDY_FILE, stage_marker
from wsisum.sampling.cluster_cache import format_stats, stats_since, stats_snapshot

log = logging.getLogger(__name__)
console = Console()


@dataclass
class StageResult:
    key: str
    status: str  # ran | reused | failed
    seconds: float = 0.0
    fingerprint: str = ""
    error: str | None = None
    clusters: dict[str, int] = field(default_factory=dict)  # clustering cache: computed / reused in this stage


@dataclass
class Study:
    """Runs stages in RUN_DIR, remembering what finished (RUN_DIR/.stages/<key>.json)."""

    run_dir: Path
    results: dict[str, StageResult] = field(default_factory=dict)
    planning: bool = False  # a dry pass: `run` only records the stage keys (for the display's total)
    planned: list[str] = field(default_factory=list)
    advance: Callable[..., None] | None = None  # the display's stages bar, while the study runs

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        (self.run_dir / STAGES_DIR).mkdir(parents=True, exist_ok=True)

    def marker(self, key: str) -> dict[str, Any]:
        """What a finished stage recorded (fingerprint, seconds, clustering counts); {} if it never finished."""
        return read_marker(stage_marker(self.run_dir, key), fix="delete it to run the stage again") or {}

    def finished(self, key: str) -> str | None:
        """The fingerprint a finished stage was run with (None if it never finished)."""
        return self.marker(key).get(FINGERPRINT)

    def run(
        self,
        key: str,
        cfg: DictConfig | dict,
        fn: Callable[[], Any],
        upstream: Sequence[str] = (),
        outputs: Sequence[Path] = (),
        clean: Callable[[], None] | None = None,
    ) -> StageResult:
        """Run `fn` unless `key` finished with the same fingerprint and its outputs exist."""
        if self.planning:
            self.planned.append(key)
            return StageResult(key, "planned")
        fp = fingerprint(cfg, [self.results[u].fingerprint for u in upstream if u in self.results])
        failed_up = [u for u in upstream if u in self.results and self.results[u].status == "failed"]
        if failed_up:
            return self._done(StageResult(key, "failed", 0.0, fp, f"skipped: {', '.join(failed_up)} failed"))
        done = self.marker(key)
        previous = done.get(FINGERPRINT)
        if previous == fp and all(Path(o).exists() for o in outputs):  # what it computed when it ran stays on record
            return self._done(StageResult(key, "reused", 0.0, fp, clusters=done.get("clusters") or {}))
        if previous is not None and previous != fp:
            self.say(f"[yellow]recompute[/yellow] {key}: its recipe or an input changed")
            if clean is not None:
                clean()
        stage_marker(self.run_dir, key).unlink(missing_ok=True)
        if not is_batch():
            console.rule(f"[bold]{key}")
        if self.advance is not None:
            self.advance(0, description=key)
        t0, before = time.perf_counter(), stats_snapshot()
        try:
            with capture_stdout(is_batch()):
                fn()
        except SystemExit as err:  # the apps exit non-zero after reporting their own errors
            if err.code == EXIT_DISK_FULL:  # no later stage could write either: stop the study here
                raise
            res = StageResult(key, "failed", time.perf_counter() - t0, fp, f"exit code {err.code}")
        else:
            res = StageResult(key, "ran", time.perf_counter() - t0, fp, clusters=stats_since(before))
            marker = {FINGERPRINT: fp, "seconds": res.seconds, "finished": time.time(), "clusters": res.clusters}
            write_marker(stage_marker(self.run_dir, key), marker)
        return self._done(res)

    def _done(self, res: StageResult) -> StageResult:
        """Record a stage's outcome and print its one line."""
        self.results[res.key] = res
        colour = {"ran": "green", "reused": "cyan", "failed": "red"}[res.status]
        seconds = f" {res.seconds:.1f}s" if res.status == "ran" else ""
        error = f" ({res.error})" if res.error else ""
        clusters = f" [dim]({format_stats(res.clusters)})[/dim]" if res.clusters and res.status == "ran" else ""
        self.say(f"[{colour}]{res.status:>6}[/{colour}] {res.key}{seconds}{error}{clusters}")
        if self.advance is not None:
            self.advance()
        return res

    @staticmethod
    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)  # one line per event, whatever the width

    def write_summary(self, config: dict) -> Path:
        path = self.run_dir / STUDY_FILE
        data = {
            "cohort_root": config.get("cohort", {}).get("root"),
            "config": config,
            "stages": {k: r.status for k, r in self.results.items()},
            "errors": {k: r.error for k, r in self.results.items() if r.error},
            "timings_s": {k: round(r.seconds, 2) for k, r in self.results.items()},
            "clusters": {k: r.clusters for k, r in self.results.items() if r.clusters},
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str))
        return path


def compose_stage(app: str, overrides: Sequence[str]) -> DictConfig:
    """Compose an app's primary config inside the running Hydra app (same config search path)."""
    return compose(config_name=app, overrides=list(overrides))


def remove(path: Path) -> Callable[[], None]:
    def _clean() -> None:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    return _clean
