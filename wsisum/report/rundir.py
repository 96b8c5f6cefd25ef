"""What a study's run directory holds (names: `wsisum.run_layout`), found on disk rather than configured.

    RUN_DIR/study.json                                   {"cohort_root": ..., "stages": ..., "config": ..., "timings_s": ...}
    RUN_DIR/summaries/<sampler>_<budget>/<dataset>/<slide_id>.h5
    RUN_DIR/evaluate/<task>/<sampler>_<budget>/metrics.csv   (and evaluate/<task>/full/metrics.csv)
    RUN_DIR/results.csv                                  every metrics.csv concatenated

Sampler and budget of a summary set come from its bags' attrs (what `wsisum-summarize` wrote, and
what evaluation labels its metrics with); the folder name is the fallback.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsisum.data.atomic import TMP_PREFIX
from wsisum.data.ground_truth import MANIFEST_NAME, MORPHOLOGY_DATASET
from wsisum.data.hdf5 import read_h5_header, reading_h5
from wsisum.data.layouts import BAG_DIR
from wsisum.errors import InputError
from wsisum.evaluate.aggregate import collect
from wsisum.evaluate.results import find_metrics, write_metrics
from wsisum.run_layout import (
    EVALUATE_DIR,
    REPORT_DIR,
    RESULTS_FILE,
    RETRIEVAL_FILE,
    RETRIEVE_DIR,
    STUDY_FILE,
    SUMMARIES_DIR,
    parse_summary_set_name,
    summary_set_name,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SummaryFile:
    """One summary bag, described from its header (its features are not read)."""

    slide_id: str
    dataset: str
    path: Path
    n_kept: int
    n_source: int | None
    source: str | None  # the source bag relative to the cohort root, as the writer recorded it
    nbytes: int


@dataclass
class SummarySet:
    """The summaries of one sampler at one budget: `summaries/<sampler>_<budget>/`; `budget` None for
    a `budget=auto` set (`<sampler>_auto`: each summary has the sampler's own size, `n_kept`)."""

    sampler: str
    budget: int | None
    path: Path
    files: dict[str, SummaryFile] = field(default_factory=dict)  # slide id -> file

    @property
    def name(self) -> str:
        return summary_set_name(self.sampler, self.budget)


@dataclass(frozen=True)
class SourceBag:
    """What the report needs of a full (source) bag's header; arrays are read on demand."""

    path: Path
    n_patches: int
    nbytes: int
    patch_size_level0: int | None
    has_coords: bool
    has_morphology: bool  # per-patch ground truth of synthetic cohorts
    attrs: dict[str, Any]


@dataclass
class RunDir:
    root: Path
    study: dict[str, Any]
    cohort_root: Path | None
    summary_sets: list[SummarySet]
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what could not be found, said in the report
    _headers: dict[Path, SourceBag] = field(default_factory=dict, repr=False)
    _morphology: dict[Path, np.ndarray | None] = field(default_factory=dict, repr=False)

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    def source_path(self, f: SummaryFile) -> Path | None:
        """The full bag a summary was drawn from: its recorded `source`, else the contract layout."""
        if self.cohort_root is None:
            return None
        candidates = []
        if f.source:
            src = Path(f.source)
            candidates.append(src if src.is_absolute() else self.cohort_root / src)
        candidates.append(self.cohort_root / BAG_DIR / f.dataset / f"{f.slide_id}.h5")
        return next((c for c in candidates if c.is_file()), None)

    def source_bag(self, f: SummaryFile) -> SourceBag | None:
        """The header of the summary's full bag (cached for this report), None when it is not found."""
        path = self.source_path(f)
        if path is None:
            return None
        if path not in self._headers:
            self._headers[path] = read_source_header(path)
        src = self._headers[path]
        if f.n_source is not None and f.n_source != src.n_patches:
            raise InputError(
                f.path,
                f"drawn from a bag of {f.n_source} patches but {path} has {src.n_patches} (another cohort or version?)",
            )
        return src

    def morphology(self, src: SourceBag) -> np.ndarray | None:
        """Per-patch ground truth (N,) of a synthetic bag (cached), None for other cohorts."""
        if not src.has_morphology:
            return None
        if src.path not in self._morphology:
            self._morphology[src.path] = read_source_array(src.path, MORPHOLOGY_DATASET)
        return self._morphology[src.path]


def _read_study(root: Path) -> dict[str, Any]:
    path = root / STUDY_FILE
    if not path.is_file():
        return {}
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable JSON: {err}") from None
    if not isinstance(study, dict):
        raise InputError(path, f"expected a JSON object, got {type(study).__name__}")
    return study


def resolve_cohort_root(value: str | None, run_root: Path) -> Path | None:
    """An absolute path as is; a relative one against the current directory, then the run dir."""
    if not value:
        return None
    p = Path(str(value)).expanduser()
    if p.is_absolute():
        return p if p.is_dir() else None
    for base in (Path.cwd(), run_root):
        if (base / p).is_dir():
            return (base / p).resolve()
    return None


def _summary_header(path: Path, dataset: str) -> tuple[SummaryFile, dict[str, Any]]:
    header = read_h5_header(path, attrs=True)
    n_kept = int(header.require("features", "no 'features' dataset: not a summary bag").shape[0])
    attrs = header.attrs
    n_source = attrs.get("n_source")
    source = attrs.get("source")
    rec = SummaryFile(
        slide_id=path.stem,
        dataset=dataset,
        path=path,
        n_kept=n_kept,
        n_source=None if n_source is None else int(n_source),
        source=str(source) if source not in (None, "") else None,
        nbytes=path.stat().st_size,
    )
    return rec, attrs


def _budget_attr(value: object) -> int | None:
    return None if str(value) == "auto" else int(value)  # type: ignore[call-overload]


def scan_summary_set(path: Path) -> SummarySet | None:
    """Read the headers of one summary set; None (with a warning) when it holds no summary bags."""
    files: dict[str, SummaryFile] = {}
    recipe: tuple[str, int | None] | None = None
    for ds_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        for bag in sorted(ds_dir.glob("*.h5")):
            if bag.name.startswith(TMP_PREFIX):
                continue
            rec, attrs = _summary_header(bag, ds_dir.name)
            files[rec.slide_id] = rec
            if recipe is None and attrs.get("sampler") not in (None, "") and attrs.get("budget") is not None:
                recipe = (str(attrs["sampler"]), _budget_attr(attrs["budget"]))
    if not files:
        log.warning("%s: no summary bags, left out of the report", path)
        return None
    recipe = recipe or parse_summary_set_name(path.name)
    if recipe is None:
        log.warning("%s: neither bag attrs nor the folder name (<sampler>_<budget>) say the recipe", path)
        return None
    return SummarySet(recipe[0], recipe[1], path, files)


def read_source_header(path: Path) -> SourceBag:
    """Size, grid stride, attrs and which per-patch arrays a full bag has (no array is read)."""
    header = read_h5_header(path, ("features", "coords", MORPHOLOGY_DATASET), attrs=True, dataset_attrs=("coords",))
    n = int(header.require("features", "no 'features' dataset").shape[0])
    coords = header.datasets.get("coords")
    has_coords = coords is not None and coords.shape == (n, 2)
    stride = coords.attrs.get("patch_size_level0") if has_coords else None
    morphology = header.datasets.get(MORPHOLOGY_DATASET)
    has_morph = morphology is not None and morphology.shape == (n,)
    stride = None if stride is None else int(stride)
    return SourceBag(path, n, path.stat().st_size, stride, has_coords, has_morph, header.attrs)


def read_source_array(path: Path, name: str) -> np.ndarray:
    """One per-patch dataset (`coords`, `morphology`) of a bag, without its features."""
    with reading_h5(path, f"cannot read '{name}'") as f:
        return f[name][()]


def _read_manifest(cohort_root: Path | None) -> dict[str, Any] | None:
    if cohort_root is None or not (cohort_root / MANIFEST_NAME).is_file():
        return None
    try:
        data = json.loads((cohort_root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.warning("%s: unreadable, lesion ground truth taken from the bags alone", cohort_root / MANIFEST_NAME)
        return None
    return data if isinstance(data, dict) else None


def open_run_dir(path: str | Path) -> RunDir:
    """Find everything a report reads; raise one `InputError` line when there is nothing to report."""
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(
            root, "run directory not found (a wsisum-pipeline run dir holds study.json, summaries/, evaluate/)"
        )
    if not root.is_dir():
        raise InputError(root, "is not a directory (expected a wsisum-pipeline run dir)")
    study = _read_study(root)
    notes = []
    if not study:
        notes.append(
            f"no {STUDY_FILE}: the cohort is unknown, so storage versus full bags and lesion retention are left out."
        )
    cohort_root = resolve_cohort_root(study.get("cohort_root"), root)
    if study.get("cohort_root") and cohort_root is None:
        notes.append(
            f"cohort_root '{study['cohort_root']}' of {STUDY_FILE} was not found (from the current directory "
            "or the run dir): storage versus full bags and lesion retention are left out."
        )
    sets = []
    sdir = root / SUMMARIES_DIR
    if sdir.is_dir():
        for d in sorted(p for p in sdir.iterdir() if p.is_dir()):
            s = scan_summary_set(d)
            if s is not None:
                sets.append(s)
    sets.sort(key=lambda s: (s.sampler, -1 if s.budget is None else s.budget))
    seen: dict[tuple[str, int], Path] = {}
    for s in sets:
        if (s.sampler, s.budget) in seen:
            raise InputError(s.path, f"same sampler and budget ({s.name}) as {seen[(s.sampler, s.budget)]}")
        seen[(s.sampler, s.budget)] = s.path
    has_results = (root / RESULTS_FILE).is_file() or (root / EVALUATE_DIR).is_dir()
    if not sets and not has_results:
        raise InputError(root, f"nothing to report: no {SUMMARIES_DIR}/, {EVALUATE_DIR}/ or {RESULTS_FILE} inside")
    return RunDir(root, study, cohort_root, sets, _read_manifest(cohort_root), notes)


def stage_metrics(root: Path, stage: str, name: str) -> pd.DataFrame | None:
    """The tidy metrics of one stage of a run (`evaluate/` -> results.csv, `retrieve/` ->
    retrieval.csv), the file regenerated from `<stage>/**/metrics.csv` when it is missing, older
    than one of them, or holding another number of rows than they give (a run removed since). None when the stage
    has not run."""
    merged = Path(root) / name
    stage_dir = Path(root) / stage
    files = find_metrics([stage_dir]) if stage_dir.is_dir() else []
    newest = max((f.stat().st_mtime for f in files), default=-math.inf)
    if not files:
        return collect([merged]) if merged.is_file() else None
    df = collect(files)
    kept = collect([merged]) if merged.is_file() and merged.stat().st_mtime >= newest else None
    if kept is not None and len(kept) == len(df):
        return kept
    why = f"older than or not made from {stage}/" if merged.is_file() else "missing"
    log.info("%s is %s: rewritten from %d metrics.csv file(s)", merged, why, len(files))
    write_metrics(merged, df.to_dict("records"))
    os.utime(merged)  # at least as new as what it was made from
    return collect([merged])


def load_results(run: RunDir) -> pd.DataFrame | None:
    """The run's MIL metrics (results.csv); None when nothing was evaluated yet."""
    return stage_metrics(run.root, EVALUATE_DIR, RESULTS_FILE)


def load_retrieval(run: RunDir) -> pd.DataFrame | None:
    """The run's retrieval metrics (retrieval.csv); None when retrieval did not run."""
    return stage_metrics(run.root, RETRIEVE_DIR, RETRIEVAL_FILE)
