"""Stage 8: the study report (tables, plots, heatmaps) from a pipeline run dir's saved outputs.

- `rundir`: what a run dir holds (study.json, summary sets, metrics, the cohort it names).
- `tables`: a table type rendered to Markdown and HTML; the results table (mean ± std over replicates)
  and the paired tables.
- `comparisons`: the paired sections (wsisum vs every baseline, retention, ablation), first in the report.
- `cost`: patches and storage of summaries versus full bags; MIL time per epoch and peak memory.
- `lesions`: lesion retention of summaries on synthetic cohorts (per-patch ground truth).
- `annotated`: the lesion share of each summary on slides a user annotated (GeoJSON, QuPath).
- `plots`: metric-versus-budget and lesion-retention figures.
- `heatmaps`: selection heatmaps drawn from coords alone.
- `render`: report.md and a self-contained report.html.
- `build`: `build_report(run_dir)`, the entry point of `wsisum-report RUN_DIR`.
"""

from wsisum.report.annotated import annotation_options
from wsisum.report.build import build_report

__all__ = ["annotation_options", "build_report"]
