"""The report's "Annotated slides" section: the lesion share of each summary on slides a user annotated.

Any cohort can have it: a directory of GeoJSON annotations (QuPath's export, one file per slide,
`<slide_id>.geojson` or `<dataset>/<slide_id>.geojson`, the names `wsisum-export` writes) gives each
patch of an annotated slide its truth (`wsisum.data.annotations`: the patch centre inside a lesion
class). Per slide x sampler x budget: the lesion share of the slide (what a uniformly random summary
keeps on average), the lesion share of the summary, and their ratio (1: the lesion kept in
proportion; 0: lost; above 1: over-represented). A slide whose file cannot be read, or whose bag
cannot be placed (no source bag, no patch size), is named in the section and left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsisum.data.annotations import find_annotations, patch_truth, read_annotations, resolve_patch_size, select_classes
from wsisum.data.hdf5 import read_h5_header
from wsisum.errors import InputError, positive_int
from wsisum.report.lesions import slide_lesion, summary_indices
from wsisum.report.render import Section
from wsisum.report.rundir import RunDir, SummaryFile, read_source_array
from wsisum.report.tables import Table

log = logging.getLogger(__name__)

CSV_FILE = "annotated_lesions.csv"
COLUMNS = [
    "dataset",
    "slide_id",
    "sampler",
    "budget",
    "annotations",
    "lesion_classes",
    "n_patches",
    "n_lesion",
    "n_kept",
    "n_kept_lesion",
    "slide_lesion_share",
    "summary_lesion_share",
    "ratio",
]


@dataclass(frozen=True)
class SlideTruth:
    path: Path  # the annotations file
    classes: list[str]  # the lesion classes found in it
    mask: np.ndarray  # (N,) bool over the source bag's patches


def annotation_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`annotations`, `lesion_classes` and `annotation_patch_size` of a report config node (report.yaml,
    or the `report:` block of pipeline.yaml) as `build_report` keywords."""
    classes = cfg.get("lesion_classes")
    size = cfg.get("annotation_patch_size")
    return {
        "annotations": None if cfg.get("annotations") in (None, "") else str(cfg["annotations"]),
        "lesion_classes": None if classes is None else [str(classes)] if isinstance(classes, str) else list(classes),
        "annotation_patch_size": None if size is None else positive_int(size, "annotation_patch_size"),
    }


def _slide_truth(
    run: RunDir, f: SummaryFile, path: Path, classes: Sequence[str] | None, patch_size: int | None
) -> SlideTruth:
    src = run.source_bag(f)
    if src is None:
        raise InputError(f.path, "its source bag was not found (cohort_root of study.json)")
    ann = read_annotations(path)
    header = read_h5_header(src.path, ("coords",), dataset_attrs=("coords",))
    if not src.has_coords:
        raise InputError(src.path, "no 'coords' (N, 2) dataset: patches cannot be placed on the annotations")
    size = resolve_patch_size(header.datasets["coords"].attrs, src.path, patch_size)
    coords = read_source_array(src.path, "coords")
    return SlideTruth(path, select_classes(ann, classes), patch_truth(ann, coords, size, classes))


def _row(f: SummaryFile, sampler: str, budget: int | None, truth: SlideTruth) -> dict[str, Any]:
    n_lesion, n_kept_lesion = slide_lesion(truth.mask, summary_indices(f.path))
    n = len(truth.mask)
    slide_share = n_lesion / n
    kept_share = n_kept_lesion / f.n_kept
    return {
        "dataset": f.dataset,
        "slide_id": f.slide_id,
        "sampler": sampler,
        "budget": budget,
        "annotations": str(truth.path),
        "lesion_classes": ";".join(truth.classes),
        "n_patches": n,
        "n_lesion": n_lesion,
        "n_kept": f.n_kept,
        "n_kept_lesion": n_kept_lesion,
        "slide_lesion_share": slide_share,
        "summary_lesion_share": kept_share,
        "ratio": kept_share / slide_share if n_lesion else math.nan,
    }


def annotated_frame(
    run: RunDir, directory: Path, classes: Sequence[str] | None = None, patch_size: int | None = None
) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per summary of an annotated slide (`COLUMNS`), and the slides left out: file -> problem."""
    truths: dict[tuple[str, str], SlideTruth | None] = {}
    problems: dict[str, str] = {}
    rows = []
    for s in run.summary_sets:
        for f in s.files.values():
            path = find_annotations(directory, f.slide_id, f.dataset)
            key = (f.dataset, f.slide_id)
            if path is None:
                continue
            try:
                if key not in truths:
                    truths[key] = None  # a slide that fails is tried (and named) once
                    truths[key] = _slide_truth(run, f, path, classes, patch_size)
                if truths[key] is not None:
                    rows.append(_row(f, s.sampler, s.budget, truths[key]))
            except InputError as err:
                problems[err.path or str(f.path)] = err.problem
                log.warning("annotated slides: %s left out: %s", f.slide_id, err)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["budget"] = df["budget"].astype("Int64")
    return df.sort_values(["sampler", "budget", "dataset", "slide_id"], ignore_index=True), problems


def _share(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def slide_table(df: pd.DataFrame) -> Table:
    t = Table(
        [
            "dataset",
            "slide",
            "sampler",
            "budget",
            "lesion patches",
            "slide share",
            "kept lesion",
            "summary share",
            "ratio",
        ],
        [],
        numeric={3, 4, 5, 6, 7, 8},
    )
    for r in df.itertuples(index=False):
        t.rows.append(
            [
                r.dataset,
                r.slide_id,
                r.sampler,
                "auto" if pd.isna(r.budget) else str(int(r.budget)),
                f"{r.n_lesion}/{r.n_patches}",
                _share(r.slide_lesion_share),
                f"{r.n_kept_lesion}/{r.n_kept}",
                _share(r.summary_lesion_share),
                _share(r.ratio),
            ]
        )
    return t


def mean_table(df: pd.DataFrame) -> Table:
    """Per sampler x budget over the lesion-positive annotated slides: mean shares and mean ratio."""
    t = Table(
        ["sampler", "budget", "lesion slides", "slide share", "summary share", "mean ratio"],
        [],
        numeric={1, 2, 3, 4, 5},
    )
    pos = df[df["n_lesion"] > 0]
    for (sampler, budget), grp in pos.groupby(["sampler", "budget"], sort=True, dropna=False):
        ratio = grp["ratio"].to_numpy(float)
        std = f" ± {ratio.std(ddof=1):.3f}" if len(ratio) > 1 else ""
        t.rows.append(
            [
                sampler,
                "auto" if pd.isna(budget) else str(int(budget)),
                str(len(grp)),
                _share(grp["slide_lesion_share"].mean()),
                _share(grp["summary_lesion_share"].mean()),
                f"{ratio.mean():.3f}{std}",
            ]
        )
    return t


def annotated_section(
    df: pd.DataFrame, directory: Path, classes: Sequence[str] | None, problems: Mapping[str, str]
) -> Section:
    sec = Section("Annotated slides: lesion share of each summary", "annotated")
    which = ", ".join(classes) if classes is not None else "every annotated class"
    sec.blocks.append(
        f"Annotations from `{directory}` ({df['slide_id'].nunique()} slide(s) with summaries); a patch is lesion "
        f"when its centre lies inside a polygon of the lesion classes ({which}). `slide share`: lesion patches "
        "of the whole bag (what a uniformly random summary keeps on average); `summary share`: lesion patches "
        "among the kept ones; `ratio`: summary share / slide share (1: the lesion kept in proportion, 0: lost, "
        f"n/a on a slide without lesion). Per slide in `{CSV_FILE}`."
    )
    sec.blocks.append(mean_table(df))
    sec.blocks.append(slide_table(df))
    if problems:
        sec.blocks.append(
            "Left out: " + "; ".join(f"`{path}`: {problem}" for path, problem in sorted(problems.items())) + "."
        )
    return sec


def annotated_report(
    run: RunDir, directory: str | Path | None, classes: Sequence[str] | None = None, patch_size: int | None = None
) -> tuple[Section | None, pd.DataFrame | None]:
    """The section and its per-slide frame; (None, None) without `directory` or any annotated summarized
    slide. A `directory` that does not exist is an error (the user named it)."""
    if directory is None:
        return None, None
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise InputError(directory, "annotations directory not found (expected <slide_id>.geojson files inside)")
    df, problems = annotated_frame(run, directory, classes, patch_size)
    if df.empty and not problems:
        log.info("%s: no annotations of a summarized slide; no annotated-slides section", directory)
        return None, None
    return annotated_section(df, directory, classes, problems), (df if not df.empty else None)
