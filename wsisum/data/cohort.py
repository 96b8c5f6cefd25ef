"""A cohort on disk in the contract layout, discovered rather than configured.

    DATA_ROOT/h5_files/<dataset>/<slide_id>.h5
    DATA_ROOT/slide_embeddings/<dataset>/<TEACHER>/<slide_id>.h5
    DATA_ROOT/labels/<task>.csv
    DATA_ROOT/splits/<task>/splits_<k>.csv

Summary bags written by `wsisum-summarize` use the same `<dataset>/<slide_id>.h5` layout under their
own directory, so a `Cohort` can point its bags at them (`bag_dir=`) and reuse everything else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsisum.data.atomic import TMP_PREFIX
from wsisum.errors import InputError

BAG_DIRS = ("h5_files", "pt_files")  # CLAM writes both side by side; h5 carries coords, so it wins


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
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise InputError(self.root, "cohort root not found (expected h5_files/<dataset>/<slide_id>.h5)")
        self.bag_dir = self._resolve_bag_dir(bag_dir)
        available = sorted(p.name for p in self.bag_dir.iterdir() if p.is_dir())
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
            for path in _bag_files(self.bag_dir / ds):
                sid = path.stem
                prev = self.slides.get(sid)
                if prev is not None:
                    if prev.dataset == ds:  # same slide as .h5 and .pt: keep the .h5 (it has coords)
                        continue
                    raise InputError(path, f"slide id '{sid}' also in dataset '{prev.dataset}': ids must be unique")
                self.slides[sid] = SlideRecord(sid, ds, path)

    def _resolve_bag_dir(self, bag_dir: str | Path | None) -> Path:
        if bag_dir is not None:
            d = Path(bag_dir).expanduser()
            if not d.is_dir():
                raise InputError(d, "bag directory not found (expected <dataset>/<slide_id>.h5 inside)")
            return d
        for name in BAG_DIRS:
            if (self.root / name).is_dir():
                return self.root / name
        raise InputError(self.root, "no h5_files/ folder (expected h5_files/<dataset>/<slide_id>.h5)")

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
    def embeddings_dir(self, dataset: str) -> Path:
        return self.root / "slide_embeddings" / dataset

    def teachers(self, dataset: str | None = None) -> list[str]:
        """Teacher names with an embedding folder in any (or the given) dataset."""
        names: set[str] = set()
        for ds in [dataset] if dataset else self.datasets:
            d = self.embeddings_dir(ds)
            if d.is_dir():
                names.update(p.name for p in d.iterdir() if p.is_dir())
        return sorted(names)

    def embedding_path(self, slide_id: str, teacher: str) -> Path:
        rec = self[slide_id]
        return self.embeddings_dir(rec.dataset) / teacher / f"{slide_id}.h5"

    # --- labels and splits ----------------------------------------------------------------------
    def labels_path(self, task: str) -> Path:
        return self.root / "labels" / f"{task}.csv"

    def splits_dir(self, task: str) -> Path:
        return self.root / "splits" / task
