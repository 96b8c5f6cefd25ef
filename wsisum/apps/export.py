"""`wsisum-export summaries=DIR|FILE out_dir=DIR [format=geojson|csv]`: summaries as QuPath annotations / CSV."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from wsisum.apps._app import CONFIG_DIR, report_input_errors
from wsisum.summarize.export import ExportReport, export_summaries


@report_input_errors
def export(cfg: DictConfig) -> ExportReport:
    report = export_summaries(cfg.summaries, cfg.out_dir, cfg["format"], cfg.patch_size_level0)
    print(f"{len(report.done)} exported, {len(report.failed)} failed -> {cfg.out_dir}")
    if report.failed:
        for line in report.failed.values():
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1)
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
