"""`wsisum-export summaries=DIR|FILE out_dir=DIR [format=geojson|csv]`: summaries as QuPath annotations / CSV."""

from __future__ import annotations

from omegaconf import DictConfig

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.errors import print_failures
from wsisum.summarize.export import ExportReport, export_summaries


@report_input_errors
def export(cfg: DictConfig) -> ExportReport:
    report = export_summaries(cfg.summaries, cfg.out_dir, cfg["format"], cfg.patch_size_level0)
    print(f"{len(report.done)} exported, {len(report.failed)} failed -> {cfg.out_dir}")
    if report.failed:
        print_failures(report.failed.values())
        raise SystemExit(1)
    return report


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
