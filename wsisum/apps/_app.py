"""What every Hydra app shares: where configs live and how expected errors are reported."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from wsisum.console import configure_console
from wsisum.data.output_faults import disk_full_cause, quiet_h5py_dealloc, where_full
from wsisum.errors import EXIT_DISK_FULL, DiskFullError, InputError, input_error_in, print_error

# The configs are package data (`wsisum/configs/`, carried by the wheel and the sdist; the top-level
# `configs/` of a clone is a link to it), so an editable and a wheel install find them at the same place.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def report_input_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn an `InputError` into one `error: <file>: <problem>` line and exit code 1, and a full disk
    (wherever it surfaced: a checkpoint, a metrics file, a summary) into one line and EXIT_DISK_FULL;
    no traceback."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig) -> Any:
        quiet_h5py_dealloc()
        configure_console(bool(cfg.get("verbose", False)))
        try:
            return task(cfg)
        except DiskFullError as err:
            print_error(err)
            raise SystemExit(EXIT_DISK_FULL) from None
        except InputError as err:
            print_error(err)
            raise SystemExit(1) from None
        except InstantiationException as err:
            cause = input_error_in(err)
            if cause is None:
                raise
            print_error(cause)
            raise SystemExit(1) from None
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", None) or "?"
            print_error(f"missing required option '{key}' (add {key}=... to the command)")
            raise SystemExit(2) from None
        except Exception as err:
            full = disk_full_cause(err)
            if full is None:
                raise
            where = where_full(full, cfg.get("paths", {}).get("output_dir", "the output directory"))
            print_error(DiskFullError(where))
            raise SystemExit(EXIT_DISK_FULL) from None

    return wrapper


def compose_app_config(name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose an app's config outside a command line (scripts, notebooks, tests), run dir pinned.

    Sets Hydra's global state as the app would have it, so `${hydra:...}` interpolations resolve.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg
