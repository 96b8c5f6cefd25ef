"""A Hydra callback that probes the run directory before Hydra creates it: an unwritable location
(read-only mount, a file in the way) is one line and exit 1, not Hydra's traceback from mkdir."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from wsisum.data.output_faults import check_writable
from wsisum.errors import EXIT_DISK_FULL, DiskFullError, InputError


class WritableRunDir(Callback):
    """Probes the parent of `hydra.run.dir` (single runs) or `hydra.sweep.dir` (multirun): the run
    dir itself carries a timestamp that Hydra resolves again, a second later, when it creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        probe_parent(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        probe_parent(config.hydra.sweep.dir)


def probe_parent(run_dir: Any) -> None:
    try:
        check_writable(Path(str(run_dir)).parent, "run directory")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except DiskFullError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_DISK_FULL) from None
