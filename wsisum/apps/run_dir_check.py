"""A Hydra callback that probes the run directory before Hydra creates it: an unwritable location
(read-only mount, a file in the way) is one line and exit 1, not Hydra's traceback from mkdir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wsisum.apps._app import report_input_errors
from wsisum.data.output_faults import check_writable


class WritableRunDir(Callback):
    """Probes the parent of `hydra.run.dir` (single runs) or `hydra.sweep.dir` (multirun): the run
    dir itself carries a timestamp that Hydra resolves again, a second later, when it creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        probe_parent(config, config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        probe_parent(config, config.hydra.sweep.dir)


def probe_parent(config: DictConfig, run_dir: Any) -> None:
    """One line and the apps' exit codes (1: unwritable, EXIT_DISK_FULL: full), as every app reports."""
    report_input_errors(lambda _: check_writable(Path(str(run_dir)).parent, "run directory"))(config)
