"""`wsisum-report RUN_DIR` (or `run_dir=RUN_DIR`): regenerate a study's report from its saved outputs."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.report import annotation_options, build_report


@report_input_errors
def report(cfg: DictConfig) -> dict[str, Path]:
    written = build_report(
        cfg.run_dir,
        heatmap_slides=int(cfg.heatmap_slides),
        heatmap_budget=None if cfg.heatmap_budget is None else int(cfg.heatmap_budget),
        metric=str(cfg.metric),
        small_lesion_patches=int(cfg.small_lesion_patches),
        **annotation_options(cfg),
    )
    print(f"report: {written['markdown']}")
    print(f"        {written['html']}")
    return written


def positional_run_dir(argv: list[str]) -> list[str]:
    """`wsisum-report RUN_DIR ...` -> `wsisum-report run_dir=RUN_DIR ...` (quoted for Hydra's grammar)."""
    if len(argv) < 2 or "=" in argv[1] or argv[1].startswith("-"):
        return argv
    path = argv[1]
    if "'" not in path:
        value = f"'{path}'"
    elif '"' not in path:
        value = f'"{path}"'
    else:
        value = path
    return [argv[0], f"run_dir={value}", *argv[2:]]


@hydra_app("report")
def _main(cfg: DictConfig) -> None:
    report(cfg)


def main() -> None:
    sys.argv = positional_run_dir(sys.argv)
    _main()


if __name__ == "__main__":
    main()
