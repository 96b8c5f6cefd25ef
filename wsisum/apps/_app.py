"""What every Hydra app shares: where configs live and how expected errors are reported."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from wsisum.console import configure_console
from wsisum.data.output_faults import disk_full_cause, quiet_h5py_dealloc, where_full
from wsisum.errors import EXIT_DISK_FULL, DiskFullError, InputError, input_error_in, print_error

# The configs are package data (`wsisum/configs/`, carried by the wheel and the sdist; the top-level
# `configs/` of a clone is a link to it), so an editable and a wheel install find them at the same place.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def option_groups(app: str) -> set[str]:
    """The config groups an app's primary config takes in its defaults list (`data`, `sampler`, ...)."""
    groups = set()
    for entry in OmegaConf.load(Path(CONFIG_DIR) / f"{app}.yaml").get("defaults") or []:
        for key in entry if not isinstance(entry, str) else []:  # "optional local", "/pool@_here_", ...
            groups.add(str(key).split()[-1].lstrip("/").split("@")[0])
    return groups


def foreign_group(app: str, argv: list[str]) -> str | None:
    """The problem with the first `group=option` of a command line that names a config group of
    another app (`wsisum-train experiment=demo`), where Hydra would print four lines about its
    defaults list; None when there is none (or another primary config is asked for)."""
    if any(a.split("=")[0] in ("-cn", "--config-name", "-cp", "--config-path") for a in argv):
        return None
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name[0] not in "._"}
    mine = option_groups(app)
    for arg in argv:
        key = arg.split("=", 1)[0] if "=" in arg else ""
        if key in groups and key not in mine:
            owners = [
                f"wsisum-{p.stem}" for p in sorted(Path(CONFIG_DIR).glob("*.yaml")) if key in option_groups(p.stem)
            ]
            where = f"; {key}= is an option of {', '.join(owners)}" if owners else ""
            return f"wsisum-{app} has no '{key}' config group ({arg}){where}"
    return None


def hydra_app(app: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """`hydra.main` on the app's primary config, refusing a config group the app does not have in one
    line (exit 1, as Hydra's own refusal) before Hydra composes anything."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=app)(task)

        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            problem = None if args or kwargs else foreign_group(app, sys.argv[1:])
            if problem:
                print_error(problem)
                raise SystemExit(1)
            return main(*args, **kwargs)

        return run

    return decorate


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
