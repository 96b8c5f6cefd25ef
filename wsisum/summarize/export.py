"""Summary bags as QuPath annotations (GeoJSON) or plain boxes (CSV), so a pathologist can look at
what a summary kept on the slide itself.

Each kept patch becomes its square in level-0 pixels: the coords are the patches' top-left corners
(CLAM/TRIDENT), and the side is read from the coords attrs, because only the patching tool knows it.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.atomic import TMP_PREFIX, atomic_path
from wsisum.data.bags import Bag, patch_size_from_attrs, read_bag
from wsisum.data.output_faults import check_writable
from wsisum.errors import InputError, positive_int

FORMATS = {"geojson": ".geojson", "csv": ".csv"}
CSV_HEADER = ("x", "y", "width", "height", "score")

# One colour per sampler, the same in every file and run, so overlays of several summaries stay readable.
SAMPLER_COLOURS = {
    "wsisum": (228, 26, 28),
    "random": (55, 126, 184),
    "kmeans": (77, 175, 74),
    "entropy": (152, 78, 163),
    "location": (255, 127, 0),
    "attention": (166, 86, 40),
    "facility": (247, 129, 191),
    "kcenter": (0, 139, 139),
    "mosaic": (153, 153, 0),
    "sdm": (0, 0, 139),
    "splice": (128, 128, 128),
}


@dataclass
class ExportReport:
    done: list[str] = field(default_factory=list)  # written files
    failed: dict[str, str] = field(default_factory=dict)  # summary file -> one-line problem

    @property
    def ok(self) -> bool:
        return not self.failed


def sampler_colour(name: str) -> tuple[int, int, int]:
    """A known sampler's colour, else one derived from its name (stable across runs, unlike hash())."""
    if name in SAMPLER_COLOURS:
        return SAMPLER_COLOURS[name]
    h = zlib.crc32(name.encode("utf-8"))
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def patch_size_of(bag: Bag, override: int | None = None) -> tuple[int | float, int | float]:
    """The file's own patch size first (it was written with the coords), then the user's option."""
    size = patch_size_from_attrs(bag.coords_attrs)
    if size is None and override is not None:
        size = (override, override)
    if size is None:
        raise InputError(
            bag.path,
            "no patch size: the 'coords' attrs have no 'patch_size_level0' (or CLAM 'patch_size' with "
            "'downsample'); pass patch_size_level0=PIXELS",
        )
    return size


def _finite_or_none(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def ranked_patches(bag: Bag) -> list[dict[str, Any]]:
    """Kept patches in rank order: by per-patch score (rank 1 = highest) when the summary has one,
    else in stored order. Each has index (into the source bag), rank, x, y and score (None if none)."""
    if bag.coords is None:
        raise InputError(bag.path, "no 'coords' dataset: the kept patches cannot be placed on the slide")
    n = len(bag.coords)
    scores = bag.extras.get("scores")
    per_patch = scores is not None and np.asarray(scores).shape == (n,)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable") if per_patch else np.arange(n)
    indices = bag.extras.get("indices", np.arange(n))
    summary_score = _finite_or_none(bag.attrs.get("score"))
    return [
        {
            "index": int(indices[i]),
            "rank": rank,
            "x": bag.coords[i, 0].item(),
            "y": bag.coords[i, 1].item(),
            "score": _finite_or_none(scores[i]) if per_patch else summary_score,
        }
        for rank, i in enumerate(order, start=1)
    ]


def _attr(bag: Bag, key: str) -> Any:
    value = bag.attrs.get(key)
    return value.tolist() if isinstance(value, np.ndarray) else value


def summary_geojson(bag: Bag, slide_id: str, patch_size_level0: int | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports as annotations: one closed square per kept patch,
    classified by sampler (so QuPath colours and filters them), with budget, rank and score."""
    width, height = patch_size_of(bag, patch_size_level0)
    sampler = str(_attr(bag, "sampler") or "summary")
    classification = {"name": sampler, "color": list(sampler_colour(sampler))}
    features = []
    for p in ranked_patches(bag):
        x, y = p["x"], p["y"]
        ring = [[x, y], [x + width, y], [x + width, y + height], [x, y + height], [x, y]]
        props = {
            "objectType": "annotation",
            "name": f"{sampler} #{p['rank']}",
            "classification": classification,
            "slide_id": slide_id,
            "sampler": sampler,
            "budget": _attr(bag, "budget"),
            "rank": p["rank"],
            "score": p["score"],
            "index": p["index"],
        }
        features.append(
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
        )
    return {"type": "FeatureCollection", "features": features}


def summary_rows(bag: Bag, patch_size_level0: int | None = None) -> list[tuple[Any, ...]]:
    """(x, y, width, height, score) per kept patch, in rank order; score None when there is none."""
    width, height = patch_size_of(bag, patch_size_level0)
    return [(p["x"], p["y"], width, height, p["score"]) for p in ranked_patches(bag)]


def summary_files(src: Path) -> list[Path]:
    """One summary file, or every `<dataset>/<slide_id>.h5` (and flat `*.h5`) under a directory."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise InputError(src, "summaries not found (expected a directory of <dataset>/<slide_id>.h5 or one .h5 file)")
    files = sorted(p for p in [*src.glob("*.h5"), *src.glob("*/*.h5")] if not p.name.startswith(TMP_PREFIX))
    if not files:
        raise InputError(src, "no summary files (expected <dataset>/<slide_id>.h5 or *.h5 inside)")
    return files


def write_export(bag: Bag, slide_id: str, out_path: Path, fmt: str, patch_size_level0: int | None) -> None:
    """Build the whole export before opening the file, then write it atomically (never half a file)."""
    if fmt == "geojson":
        text = json.dumps(summary_geojson(bag, slide_id, patch_size_level0), allow_nan=False)  # NaN is not JSON
        with atomic_path(out_path) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        return
    rows = summary_rows(bag, patch_size_level0)
    with atomic_path(out_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)  # csv writes None (no score) as an empty cell


def export_summaries(
    src: str | Path, out_dir: str | Path, fmt: str = "geojson", patch_size_level0: Any = None
) -> ExportReport:
    """Export every summary under `src` to `out_dir`, mirroring its layout (`<dataset>/<slide_id>.geojson`).

    A bad file is reported in the result and the rest go on; bad options fail before any work.
    """
    fmt = str(fmt).strip().lower()
    if fmt not in FORMATS:
        raise InputError(None, f"format={fmt} is not one of {', '.join(FORMATS)}")
    override = None if patch_size_level0 is None else positive_int(patch_size_level0, "patch_size_level0")
    src = Path(src).expanduser()
    files = summary_files(src)
    out_dir = check_writable(Path(out_dir).expanduser(), "export directory")
    report = ExportReport()
    for path in files:
        relative = Path(path.name) if src.is_file() else path.relative_to(src)
        out_path = out_dir / relative.with_suffix(FORMATS[fmt])
        try:
            write_export(read_bag(path), path.stem, out_path, fmt, override)
        except InputError as err:
            report.failed[str(path)] = str(err)
            continue
        report.done.append(str(out_path))
    return report
