"""A cohort on disk, discovered rather than configured, in any of the layouts of `layouts.py`.

    DATA_ROOT/h5_files/<dataset>/<slide_id>.h5                 (or CLAM's flat folders, or a TRIDENT job dir)
    DATA_ROOT/slide_embeddings/<dataset>/<TEACHER>/<slide_id>.h5
    DATA_ROOT/labels/<task>.csv
    DATA_ROOT/splits/<task>/splits_<k>.csv

Summary bags written by `wsisum-summarize` use the `<dataset>/<slide_id>.h5` layout under their own
directory whatever the cohort's layout, so a `Cohort` can point its bags at them (`bag_dir=`) and
reuse everything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsisum.data.atomic import TMP_PREFIX
from wsisum.data.layouts import EMBEDDINGS_DIR, LABELS_DIR, SPLITS_DIR, Layout, resolve, subdirs
from wsisum.errors import InputError


@dataclass(frozen=True)
class SlideRecord:
    """Where one slide's bag lives and which dataset it belongs to."""

    slide_id: str
    dataset: str
    bag_path: Path


def file_identity(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns) of a bag file, (-1, -1) when missing: what caches key on so that a changed
    bag is never served a stale entry (stat only, no open)."""
    try:
        st = Path(path).stat()
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _bag_files(directory: Path) -> Iterable[Path]:
    for p in sorted(directory.iterdir()):
        # a dangling link is kept: reading it then reports the missing target instead of the slide vanishing
        if (p.is_file() or p.is_symlink()) and p.suffix in (".h5", ".pt") and not p.name.startswith(TMP_PREFIX):
            yield p


class Cohort:
    """Slides (by id) of one or more datasets under a root, their teachers, labels and splits."""

    def __init__(
        self,
        root: str | Path,
        datasets: Sequence[str] | None = None,
        bag_dir: str | Path | None = None,
        layout: str = "auto",
        encoder: str | None = None,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise InputError(self.root, "cohort root not found (expected h5_files/<dataset>/<slide_id>.h5)")
        self.layout: Layout | None = self._resolve_layout(layout, encoder, summaries=bag_dir is not None)
        if bag_dir is not None:
            self.bag_dir = Path(bag_dir).expanduser()
            if not self.bag_dir.is_dir():
                raise InputError(self.bag_dir, "bag directory not found (expected <dataset>/<slide_id>.h5 inside)")
            dirs_of = {d.name: (d,) for d in subdirs(self.bag_dir)}
        else:
            assert self.layout is not None
            dirs_of = self.layout.bag_dirs
            first = next(iter(dirs_of.values()))[0]
            self.bag_dir = first.parent if self.layout.name == "contract" else first
        available = sorted(dirs_of)
        if datasets:
            unknown = [d for d in datasets if d not in available]
            if unknown:
                raise InputError(self.bag_dir, f"no dataset folder {unknown} (found: {available or 'none'})")
            self.datasets = list(datasets)
        else:
            self.datasets = available
        if not self.datasets:
            raise InputError(self.bag_dir, "no dataset folders (expected <dataset>/<slide_id>.h5)")
        self.slides: dict[str, SlideRecord] = {}
        for ds in self.datasets:
            for directory in dirs_of[ds]:
                self._add_bags(ds, directory)

    def _resolve_layout(self, layout: str, encoder: str | None, summaries: bool) -> Layout | None:
        try:
            return resolve(self.root, layout, encoder)
        except InputError:
            if summaries and layout == "auto":  # summary bags alone: there are no teachers to find
                return None
            raise

    def _add_bags(self, dataset: str, directory: Path) -> None:
        for path in _bag_files(directory):
            sid = path.stem
            prev = self.slides.get(sid)
            if prev is not None:
                if prev.dataset == dataset:  # same slide as .h5 and .pt: keep the .h5 (it has coords)
                    continue
                raise InputError(path, f"slide id '{sid}' also in dataset '{prev.dataset}': ids must be unique")
            self.slides[sid] = SlideRecord(sid, dataset, path)

    def __len__(self) -> int:
        return len(self.slides)

    def __contains__(self, slide_id: object) -> bool:
        return slide_id in self.slides

    def __getitem__(self, slide_id: str) -> SlideRecord:
        try:
            return self.slides[slide_id]
        except KeyError:
            raise InputError(self.bag_dir, f"no bag for slide '{slide_id}'") from None

    def slide_ids(self, dataset: str | None = None) -> list[str]:
        return [s for s, r in self.slides.items() if dataset is None or r.dataset == dataset]

    # --- teachers -----------------------------------------------------------------------------
    def teachers(self, dataset: str | None = None) -> list[str]:
        """Teacher names with an embedding folder in any (or the given) dataset."""
        if self.layout is None:
            return []
        names: set[str] = set()
        for ds in [dataset] if dataset else self.datasets:
            names.update(self.layout.teacher_dirs.get(ds, {}))
        return sorted(names)

    def teacher_dir(self, dataset: str, teacher: str) -> Path:
        if self.layout is None:
            return self.root / EMBEDDINGS_DIR / dataset / teacher
        return self.layout.teacher_dir(dataset, teacher)

    def embedding_path(self, slide_id: str, teacher: str) -> Path:
        rec = self[slide_id]
        return self.teacher_dir(rec.dataset, teacher) / f"{slide_id}.h5"

    # --- labels and splits ----------------------------------------------------------------------
    def labels_path(self, task: str) -> Path:
        return self.root / LABELS_DIR / f"{task}.csv"

    def splits_dir(self, task: str) -> Path:
        return self.root / SPLITS_DIR / task
