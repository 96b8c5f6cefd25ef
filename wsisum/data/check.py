"""`wsisum-check`'s scan: every bag header, teacher file, label and split of a cohort, all problems at once.

Only headers are read (shapes and dtypes, never feature values: the stages check those), so 10,000
slides take seconds and a bad file is found before an hours-long run instead of inside it.

A problem is fatal when a later stage would stop on it, or skip the file and exit 1:
  unreadable, empty or badly shaped bags; a bag whose D differs from the cohort's (majority) D;
  unreadable or badly shaped teacher files, and a teacher file whose D_t differs from its teacher's;
  a teacher named in `teachers=` that no slide has; the task's labels or splits missing or
  unreadable; a leaky or duplicated split; split ids without a bag or without a label.
A warning is what the stages tolerate by design and only log:
  a slide without a teacher file (pretraining masks it in the loss), labelled slides that have no
  bag and are in no split (one labels file often serves several cohorts), bags without a label
  (pretraining uses them, evaluation does not), and a cohort without any teacher.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsisum.data.bags import bag_info
from wsisum.data.cohort import Cohort
from wsisum.data.hdf5 import read_h5_header
from wsisum.data.tasks import TaskSpec
from wsisum.errors import InputError, examples
from wsisum.progress import item_bar

if TYPE_CHECKING:  # labels and splits need pandas: imported where the task is checked, never in workers
    from wsisum.data.labels import Labels

CHUNK = 256  # headers per worker call: amortises the pickling, keeps the bar moving
PARALLEL_MIN_FILES = 4000  # below this, starting worker processes costs more than it saves
PROGRESS_MIN_FILES = 500  # below this a scan is over before a bar is worth drawing
PARTS = ("train", "val", "test")  # CLAM split columns (as wsisum.data.splits reads them)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing to fix, as the line the app prints."""

    path: str | None
    what: str
    fatal: bool = True

    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{'problem' if self.fatal else 'warning'}: {where}{self.what}"


@dataclass
class CohortCheck:
    """What a scan found: table rows (section, item, value) and every problem, in scan order."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_slides: int = 0

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)

    @property
    def n_fatal(self) -> int:
        return sum(p.fatal for p in self.problems)

    def add(self, path: str | Path | None, what: str, fatal: bool = True) -> None:
        self.problems.append(Problem(None if path is None else str(path), what, fatal))

    def summary(self) -> str:
        """The app's last line: the verdict a user needs before the long run."""
        warnings = len(self.problems) - self.n_fatal
        if self.fatal:
            also = f" and {warnings} warning(s)" if warnings else ""
            return f"{self.n_fatal} problem(s){also}; a later stage would fail"
        return f"cohort OK: {self.n_slides} slide(s) checked" + (f", {warnings} warning(s)" if warnings else "")


@dataclass(frozen=True)
class TeacherInfo:
    """What a header read tells about one slide embedding."""

    path: str
    dim: int
    dtype: str


def teacher_info(path: str | Path) -> TeacherInfo:
    """D_t and dtype of one teacher file without reading it; `features` must be (1, D_t) or (D_t,)."""
    path = Path(path)
    if not path.is_file():  # a dangling link: say so, not "corrupt"
        raise InputError(path, "file not found")
    features = read_h5_header(path).require("features")
    shape, dtype = features.shape, features.dtype
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)) or shape[-1] == 0:
        raise InputError(path, f"slide embedding must have shape (1, D) or (D,), got {shape}")
    if dtype.kind not in "fiu":
        raise InputError(path, f"'features' has non-numeric dtype {dtype}")
    return TeacherInfo(str(path), int(shape[-1]), str(dtype))


def _read_chunk(kind: str, paths: list[str]) -> list[tuple[str, Any, Problem | None]]:
    """(path, header info or None, problem or None) per file; runs in a worker process too."""
    reader = bag_info if kind == "bag" else teacher_info
    out: list[tuple[str, Any, Problem | None]] = []
    for path in paths:
        try:
            out.append((path, reader(path), None))
        except InputError as err:
            out.append((path, None, Problem(err.path or path, err.problem)))
    return out


class HeaderScan:
    """Reads file headers in order, in worker processes for large cohorts: a scan is one open per
    file, which on NFS/Lustre waits on the network, so it scales with processes."""

    def __init__(self, workers: int | None = None, progress: bool = False):
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.progress = progress
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> HeaderScan:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def read(self, kind: str, paths: Sequence[Path], label: str) -> tuple[dict[str, Any], list[Problem]]:
        """Path -> header info of every readable file, and one problem per unreadable one."""
        names = [str(p) for p in paths]
        try:
            return self._read(kind, names, label, parallel=self.workers > 1 and len(names) >= PARALLEL_MIN_FILES)
        except BrokenProcessPool:  # e.g. a main module spawn cannot re-import (`python - < script`)
            log.warning("header-reading worker processes failed to start; reading in this process")
            self.workers = 1
            return self._read(kind, names, label, parallel=False)

    def _read(self, kind: str, names: list[str], label: str, parallel: bool) -> tuple[dict[str, Any], list[Problem]]:
        chunks = [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]
        if parallel:
            if self.pool is None:  # spawn, as the summarize pool: no lock or thread state is inherited
                self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
            results = self.pool.map(_read_chunk, [kind] * len(chunks), chunks)
        else:
            results = map(_read_chunk, [kind] * len(chunks), chunks)
        infos: dict[str, Any] = {}
        problems: list[Problem] = []
        enabled = self.progress and len(names) >= PROGRESS_MIN_FILES
        with item_bar(len(names), f"check {label}", unit="files", enabled=enabled) as advance:
            for result in results:
                for path, info, problem in result:
                    if problem is None:
                        infos[path] = info
                    else:
                        problems.append(problem)
                advance(len(result))
        return infos, problems


def _tally(counts: Counter) -> str:
    """`8` when every file agrees, else `8 (11), 16 (1)`: the odd ones out stand out."""
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{value} ({n})" for value, n in counts.most_common()) or "-"


def _odd_dims(infos: Mapping[str, Any]) -> tuple[int | None, list[str]]:
    """The most common dim and the files that differ from it (strays from another encoder)."""
    counts = Counter(info.dim for info in infos.values())
    dim = counts.most_common(1)[0][0] if counts else None
    return dim, [p for p, info in infos.items() if info.dim != dim]


def _check_bags(cohort: Cohort, scan: HeaderScan, report: CohortCheck) -> None:
    for ds in cohort.datasets:
        report.rows.append(("slides", ds, str(len(cohort.slide_ids(ds)))))
    report.rows.append(("slides", "total", str(len(cohort))))
    if not cohort.slides:
        report.add(cohort.bag_dir, "no bags found")
    infos, problems = scan.read("bag", [rec.bag_path for rec in cohort.slides.values()], "bags")
    report.problems += problems
    if not infos:
        return
    sizes = [info.n_patches for info in infos.values()]
    report.rows.append(("patches", "min / median / max", f"{min(sizes)} / {statistics.median(sizes):g} / {max(sizes)}"))
    dim, strays = _odd_dims(infos)
    for path in strays:
        report.add(
            path, f"feature dim {infos[path].dim} differs from the cohort's {dim}; one cohort must use one encoder"
        )
    report.rows.append(("features", "D", _tally(Counter(info.dim for info in infos.values()))))
    report.rows.append(("features", "dtype", _tally(Counter(info.dtype for info in infos.values()))))


def _teacher_files(cohort: Cohort, teacher: str, report: CohortCheck) -> list[Path]:
    """The teacher's files that exist (one listing per folder, not a stat per slide); the slides
    without one become one warning per folder."""
    listings: dict[Path, set[str] | None] = {}
    present: list[Path] = []
    missing: dict[Path, list[str]] = {}
    for sid in cohort.slides:
        path = cohort.embedding_path(sid, teacher)
        if path.parent not in listings:
            try:
                listings[path.parent] = {entry.name for entry in os.scandir(path.parent)}
            except OSError:
                listings[path.parent] = None
        names = listings[path.parent]
        if names is not None and path.name in names:
            present.append(path)
        else:
            missing.setdefault(path.parent, []).append(sid)
    present_in = Counter(p.parent for p in present)
    for folder, sids in missing.items():
        what = "folder missing" if listings[folder] is None else "no file"
        n_here = present_in[folder] + len(sids)
        report.add(folder, f"{what} for {len(sids)} of {n_here} slide(s) ({examples(sids)})", fatal=False)
    return present


def _check_teacher(cohort: Cohort, teacher: str, scan: HeaderScan, report: CohortCheck) -> None:
    paths = _teacher_files(cohort, teacher, report)
    if not paths:
        report.add(None, f"teacher {teacher}: no embedding file for any slide")
    infos, problems = scan.read("teacher", paths, teacher)
    report.problems += problems
    dim, strays = _odd_dims(infos)
    for path in strays:
        report.add(path, f"teacher {teacher} embedding has dim {infos[path].dim}, the other slides' have {dim}")
    n = len(cohort)
    share = f"{len(paths)} / {n} slides ({100 * len(paths) / n:.0f}%)" if n else "no slides"
    dims = _tally(Counter(info.dim for info in infos.values()))
    dtypes = _tally(Counter(info.dtype for info in infos.values()))
    report.rows.append(("teacher", teacher, f"{share}; D_t {dims}; {dtypes}"))


def _read_labels(task: TaskSpec, report: CohortCheck) -> Labels | None:
    from wsisum.data.labels import read_labels

    try:
        labels = read_labels(task.labels, task.classes)
    except InputError as err:
        report.add(err.path, err.problem)
        return None
    counts = Counter(labels.label_of.values())
    for index, name in enumerate(labels.classes):
        report.rows.append(("labels", name, str(counts.get(index, 0))))
    return labels


def _check_split(path: Path, labels: Labels | None, bags: set[str], report: CohortCheck) -> set[str]:
    """Check one fold and add its row; returns its slide ids (none when unreadable)."""
    from wsisum.data.splits import read_split

    case_of = labels.case_of if labels is not None else None
    try:
        split, status = read_split(path, case_of=case_of), "clean"
    except InputError as err:
        report.add(err.path, err.problem)
        if not err.problem.startswith("leaky split"):
            report.rows.append(("split", path.name, "unreadable"))
            return set()
        split, status = read_split(path, case_of=case_of, allow_leakage=True), "LEAKY"
    ids = [s for part in PARTS for s in split.part(part)]
    no_bag = [s for s in ids if s not in bags]
    if no_bag:
        report.add(path, f"{len(no_bag)} slide id(s) have no bag ({examples(no_bag)})")
    unlabelled = [s for s in ids if labels is not None and s not in labels.label_of]
    if unlabelled:
        report.add(path, f"{len(unlabelled)} slide id(s) have no label in {labels.path} ({examples(unlabelled)})")
    sizes = " / ".join(f"{part} {len(split.part(part))}" for part in PARTS)
    report.rows.append(("split", path.name, f"{sizes}; {status}"))
    return set(ids)


def _check_task(cohort: Cohort, task: TaskSpec, report: CohortCheck) -> None:
    from wsisum.data.splits import split_files

    wanted = set(task.datasets or cohort.datasets)
    for ds in sorted(wanted - set(cohort.datasets)):
        report.add(cohort.bag_dir, f"task {task.name}: dataset folder '{ds}' not found or not scanned")
    bags = {sid for sid, rec in cohort.slides.items() if rec.dataset in wanted}
    labels = _read_labels(task, report)
    try:
        paths = list(split_files(task.splits_dir).values())
    except InputError as err:
        report.add(err.path, err.problem)
        paths = []
    in_splits: set[str] = set()
    for path in paths:
        in_splits |= _check_split(path, labels, bags, report)
    if labels is None:
        return
    elsewhere = sorted(set(labels.label_of) - bags - in_splits)
    if elsewhere:
        what = f"{len(elsewhere)} labelled slide(s) have no bag and are in no split ({examples(elsewhere)})"
        report.add(labels.path, what, fatal=False)
    unlabelled = sorted(bags - set(labels.label_of))
    if unlabelled:
        report.add(labels.path, f"{len(unlabelled)} slide(s) with a bag have no label ({examples(unlabelled)})", False)


def check_cohort(
    root: str | Path,
    datasets: Sequence[str] | None = None,
    task: TaskSpec | Mapping[str, Any] | None = None,
    teachers: Sequence[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
    **cohort_options: Any,
) -> CohortCheck:
    """Scan a cohort's headers; return the table rows and every problem found (it never stops early).

    `task`: a `TaskSpec` or a task config mapping (`{"name": "my_task"}`); `teachers`: default every
    teacher folder found; `workers`: header-reading processes for large cohorts (None = up to 8,
    0 or 1 = this process); `cohort_options` go to `Cohort` (e.g. a layout).
    """
    report = CohortCheck()
    try:
        spec = TaskSpec.from_config(task, root) if isinstance(task, Mapping) else task
        cohort = Cohort(root, datasets, **cohort_options)
    except InputError as err:  # nothing to scan: root, dataset folders, duplicated slide ids, task config
        report.add(err.path, err.problem)
        return report
    report.n_slides = len(cohort)
    with HeaderScan(workers, progress) as scan:
        _check_bags(cohort, scan, report)
        teacher_names = list(teachers) if teachers else cohort.teachers()
        if not teacher_names:
            report.add(None, "no teacher embeddings found (wsisum-train needs at least one)", fatal=False)
        for teacher in teacher_names:
            _check_teacher(cohort, teacher, scan, report)
    if spec is not None:
        _check_task(cohort, spec, report)
    return report


def render_table(report: CohortCheck, title: str = "cohort check") -> Any:
    """The scan's rows as one rich table (rich writes plain text when not on a terminal)."""
    from rich.table import Table

    table = Table(title=title)
    for name in ("section", "item", "value"):
        table.add_column(name)
    previous = None
    for section, item, value in report.rows:
        table.add_row(section if section != previous else "", item, value)
        previous = section
    return table
