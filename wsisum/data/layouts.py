"""Where a cohort's bags and teacher embeddings sit, for the three layouts users already have.

    contract  ROOT/h5_files/<dataset>/<slide>.h5         ROOT/slide_embeddings/<dataset>/<TEACHER>/<slide>.h5
    clam      ROOT/h5_files/<slide>.h5, ROOT/pt_files/<slide>.pt (CLAM's own output; one dataset, named
              after ROOT)                               ROOT/slide_embeddings/<TEACHER>/<slide>.h5
    trident   JOB_DIR/<mag>x_<size>px_<overlap>px_overlap/features_<encoder>/<slide>.h5 (one dataset, named
              after JOB_DIR)                            JOB_DIR/<...>_overlap/slide_features_<teacher>/<slide>.h5

Detected from the folder (`layout="auto"`), or forced with `data.layout=`. Nothing is copied or linked:
the layout only says where to look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsisum.data.atomic import TMP_PREFIX
from wsisum.errors import InputError

LAYOUTS = ("auto", "contract", "clam", "trident")
BAG_DIR, PT_DIR = "h5_files", "pt_files"
BAG_DIRS = (BAG_DIR, PT_DIR)  # CLAM writes both side by side; h5 carries coords, so it wins
EMBEDDINGS_DIR, LABELS_DIR, SPLITS_DIR = "slide_embeddings", "labels", "splits"
BAG_SUFFIXES = (".h5", ".pt")
FEATURES_PREFIX, SLIDE_FEATURES_PREFIX = "features_", "slide_features_"
EXPECTED = (
    "expected h5_files/<dataset>/<slide_id>.h5, CLAM's h5_files/*.h5 or pt_files/*.pt, or a TRIDENT job dir "
    "with <mag>x_<size>px_<overlap>px_overlap/features_<encoder>/"
)


@dataclass(frozen=True)
class Layout:
    """The resolved layout: bag folders per dataset (searched in order) and teacher folders.

    `teacher_dirs[dataset][teacher]` is the folder holding `<slide>.h5` of that teacher.
    """

    name: str
    bag_dirs: dict[str, tuple[Path, ...]]
    teacher_dirs: dict[str, dict[str, Path]] = field(default_factory=dict)
    coords_dir: Path | None = None  # TRIDENT: the patch-setting folder the features came from
    root: Path = Path()

    @property
    def datasets(self) -> list[str]:
        return list(self.bag_dirs)

    def teacher_dir(self, dataset: str, teacher: str) -> Path:
        """The folder of one teacher's files (where it would be, when this cohort has none of it)."""
        found = find_teacher(self.teacher_dirs.get(dataset, {}), teacher)
        if found is not None:
            return found
        if self.name == "contract":
            return self.root / EMBEDDINGS_DIR / dataset / teacher
        if self.name == "clam":
            return self.root / EMBEDDINGS_DIR / teacher
        return (self.coords_dir or self.root) / f"{SLIDE_FEATURES_PREFIX}{teacher.lower()}"


def has_bag_files(directory: Path) -> bool:
    try:
        return any(p.suffix in BAG_SUFFIXES and not p.name.startswith(TMP_PREFIX) for p in directory.iterdir())
    except OSError:
        return False


def subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []


def detect(root: Path) -> str:
    """The layout a folder is in: CLAM's flat bag folder, our dataset folders, or a TRIDENT job dir."""
    for name in BAG_DIRS:
        d = root / name
        if d.is_dir():
            return "contract" if subdirs(d) or not has_bag_files(d) else "clam"
    if trident_choices(root):
        return "trident"
    raise InputError(root, f"no h5_files/ folder ({EXPECTED})")


def resolve(root: Path, layout: str = "auto", encoder: str | None = None) -> Layout:
    layout = str(layout or "auto")
    if layout not in LAYOUTS:
        raise InputError(None, f"data.layout must be one of {list(LAYOUTS)}, not '{layout}'")
    if layout == "auto":
        layout = detect(root)
    if layout == "contract":
        return contract_layout(root)
    if layout == "clam":
        return clam_layout(root)
    return trident_layout(root, encoder)


def contract_layout(root: Path) -> Layout:
    bag_root = next((root / n for n in BAG_DIRS if (root / n).is_dir()), None)
    if bag_root is None:
        raise InputError(root, "no h5_files/ folder (expected h5_files/<dataset>/<slide_id>.h5)")
    datasets = subdirs(bag_root)
    if not datasets:
        raise InputError(bag_root, "no dataset folders (expected <dataset>/<slide_id>.h5)")
    teachers = {d.name: {t.name: t for t in subdirs(root / EMBEDDINGS_DIR / d.name)} for d in datasets}
    return Layout("contract", {d.name: (d,) for d in datasets}, teachers, root=root)


def clam_layout(root: Path) -> Layout:
    dirs = tuple(root / n for n in BAG_DIRS if has_bag_files(root / n))
    if not dirs:
        raise InputError(root, "no CLAM bags (expected h5_files/<slide_id>.h5 or pt_files/<slide_id>.pt)")
    name = root.resolve().name
    return Layout("clam", {name: dirs}, {name: {t.name: t for t in subdirs(root / EMBEDDINGS_DIR)}}, root=root)


def trident_choices(root: Path) -> list[tuple[Path, str]]:
    """(patch-setting folder, encoder) of every `features_<encoder>/` in a job dir (or in one setting)."""
    found = []
    for setting in [root, *subdirs(root)]:
        for d in subdirs(setting):
            if d.name.startswith(FEATURES_PREFIX) and d.name != FEATURES_PREFIX:
                found.append((setting, d.name[len(FEATURES_PREFIX) :]))
    return found


def choice_label(root: Path, setting: Path, encoder: str) -> str:
    return encoder if setting == root else f"{setting.name}/{encoder}"


def trident_layout(root: Path, encoder: str | None) -> Layout:
    choices = trident_choices(root)
    if not choices:
        raise InputError(root, "no TRIDENT features (expected <mag>x_<size>px_<overlap>px_overlap/features_<encoder>/)")
    labels = [choice_label(root, s, e) for s, e in choices]
    if encoder:
        picked = [c for c, lab in zip(choices, labels) if encoder in (c[1], lab)]
        if not picked:
            raise InputError(root, f"no features_{encoder}/ (data.encoder= one of: {', '.join(labels)})")
    else:
        picked = choices
    if len(picked) > 1:
        shown = ", ".join(choice_label(root, s, e) for s, e in picked)
        raise InputError(root, f"several patch encoders; choose one with data.encoder= ({shown})")
    setting, enc = picked[0]
    teachers: dict[str, Path] = {}
    for s in [setting, root, *subdirs(root)]:  # the features' own patch setting first
        for d in subdirs(s):
            name = d.name[len(SLIDE_FEATURES_PREFIX) :]
            if d.name.startswith(SLIDE_FEATURES_PREFIX) and name:
                teachers.setdefault(name, d)
    name = root.resolve().name
    return Layout("trident", {name: (setting / f"{FEATURES_PREFIX}{enc}",)}, {name: teachers}, setting, root)


def find_teacher(dirs: dict[str, Path], teacher: str) -> Path | None:
    """A teacher's folder by name, case-insensitive (TRIDENT writes `titan`, configs say `TITAN`)."""
    if teacher in dirs:
        return dirs[teacher]
    same = [d for n, d in dirs.items() if n.lower() == teacher.lower()]
    return same[0] if len(same) == 1 else None


def layout_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """`layout=` and `encoder=` of a `data` config, as `Cohort` takes them (older configs lack both)."""
    return {"layout": str(data.get("layout") or "auto"), "encoder": data.get("encoder") or None}
