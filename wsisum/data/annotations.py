"""A pathologist's annotations (GeoJSON, as QuPath exports them) as per-patch truth of a bag.

The inverse of `wsisum-export`: polygons in level-0 pixels go in, a boolean per patch comes out. A
patch is inside a class when its centre, coords (top-left corner) + patch size / 2, lies inside the
union of that class's polygons (holes excluded; a point on the outline is outside).

What is read: a FeatureCollection, a bare list of Features (QuPath's "Export objects" without
"FeatureCollection") or a single Feature; geometry Polygon or MultiPolygon (holes kept), or the
polygons of a GeometryCollection. The class is `properties.classification.name` (QuPath), else
`properties.name`, else `Unclassified`. Features without polygons (points, lines, a detection's
centroid) are skipped with a warning. The file is parsed with `json` only: nothing a user hands us runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsisum.data.bags import Bag, patch_size_from_attrs
from wsisum.errors import InputError, examples, short_error

log = logging.getLogger(__name__)

ANNOTATION_SUFFIXES = (".geojson", ".json")
UNCLASSIFIED = "Unclassified"
POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Annotations:
    """One file's polygons: class name -> the union of its polygons (a valid shapely geometry)."""

    path: str
    regions: dict[str, BaseGeometry]
    skipped: int = 0  # features without polygonal geometry

    @property
    def classes(self) -> list[str]:
        return sorted(self.regions)


def _load_features(path: Path) -> list[Any]:
    if not path.is_file():
        raise InputError(path, "annotations file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not a text file (expected GeoJSON)") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not JSON ({short_error(err)})") from None
    except OSError as err:
        raise InputError(path, f"unreadable: {short_error(err)}") from None
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise InputError(path, "FeatureCollection without a 'features' list")
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        kind = data.get("type") if isinstance(data, Mapping) else type(data).__name__
        raise InputError(
            path,
            f"not GeoJSON annotations: expected a FeatureCollection, a Feature or a list of Features, got {kind!r}",
        )
    if not features:
        raise InputError(path, "no features: the file holds no annotation")
    return features


def _ring(ring: Any, where: str) -> np.ndarray:
    """One linear ring as (n, 2) float64: numbers only (no strings, no nulls), finite, >= 3 positions."""
    try:
        arr = np.asarray(ring)
    except ValueError:  # ragged: positions of different lengths
        raise InputError(None, f"{where}: coordinates are not a list of [x, y] positions") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(None, f"{where}: coordinates are not numbers")
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise InputError(None, f"{where}: coordinates are not a list of [x, y] positions")
    if not np.isfinite(arr).all():
        raise InputError(None, f"{where}: non-finite coordinates (NaN/Inf)")
    if len(arr) < 3:
        raise InputError(None, f"{where}: a ring of {len(arr)} position(s) (a polygon needs at least 3)")
    return arr[:, :2].astype(np.float64)


def _polygon(rings: Any, where: str) -> BaseGeometry:
    if not isinstance(rings, list) or not rings:
        raise InputError(None, f"{where}: a polygon needs a list of rings")
    shell, *holes = (_ring(r, where) for r in rings)
    return shapely.Polygon(shell, holes)


def _geometry(geometry: Any, where: str) -> BaseGeometry | None:
    """The polygons of a GeoJSON geometry (None when it has none)."""
    if not isinstance(geometry, Mapping):
        return None
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        parts = [_geometry(g, where) for g in geometry.get("geometries") or []]
        parts = [p for p in parts if p is not None]
        return shapely.union_all(parts) if parts else None
    if kind not in POLYGONAL:
        return None
    coords = geometry.get("coordinates")
    if kind == "Polygon":
        polys = [_polygon(coords, where)]
    else:
        if not isinstance(coords, list) or not coords:
            raise InputError(None, f"{where}: a MultiPolygon needs a list of polygons")
        polys = [_polygon(p, where) for p in coords]
    geom = shapely.union_all([p if p.is_valid else shapely.make_valid(p) for p in polys])
    return geom if not geom.is_empty else None


def _class_name(properties: Any) -> str:
    if not isinstance(properties, Mapping):
        return UNCLASSIFIED
    cls = properties.get("classification")
    name = cls.get("name") if isinstance(cls, Mapping) else cls
    if name in (None, "") and properties.get("name") not in (None, ""):
        name = properties["name"]
    return UNCLASSIFIED if name in (None, "") else str(name)


def read_annotations(path: str | Path) -> Annotations:
    """Read a GeoJSON annotations file; one `InputError` line naming the file for anything malformed."""
    path = Path(path)
    parts: dict[str, list[BaseGeometry]] = {}
    skipped = []
    for i, feature in enumerate(_load_features(path)):
        where = f"feature {i}"
        if not isinstance(feature, Mapping):
            raise InputError(path, f"{where}: not a GeoJSON Feature (a JSON {type(feature).__name__})")
        try:
            geom = _geometry(feature.get("geometry"), where)
        except InputError as err:
            raise InputError(path, err.problem) from None
        except (shapely.errors.ShapelyError, ValueError, TypeError) as err:
            raise InputError(path, f"{where}: not a valid polygon ({short_error(err)})") from None
        if geom is None:
            skipped.append(i)
            continue
        parts.setdefault(_class_name(feature.get("properties")), []).append(geom)
    if skipped:
        log.warning("%s: %d feature(s) without polygons skipped (%s)", path, len(skipped), examples(skipped))
    if not parts:
        raise InputError(path, f"no polygon among its {len(skipped)} feature(s): nothing to mark patches with")
    regions = {name: shapely.union_all(geoms) for name, geoms in parts.items()}
    for geom in regions.values():
        shapely.prepare(geom)
    return Annotations(str(path), regions, len(skipped))


def select_classes(ann: Annotations, classes: Iterable[str] | None) -> list[str]:
    """The annotated classes among `classes` (case-insensitive); every class when `classes` is None."""
    if classes is None:
        return ann.classes
    wanted = {str(c).casefold() for c in classes}
    return [c for c in ann.classes if c.casefold() in wanted]


def patch_centres(coords: np.ndarray, patch_size: tuple[float, float] | float) -> np.ndarray:
    """(N, 2) centres in level-0 pixels of patches whose top-left corners are `coords`."""
    size = np.broadcast_to(np.asarray(patch_size, dtype=np.float64), (2,))
    return np.asarray(coords, dtype=np.float64).reshape(-1, 2) + size / 2


def class_masks(ann: Annotations, centres: np.ndarray) -> dict[str, np.ndarray]:
    """Class name -> (N,) bool: which patch centres lie inside the class's region."""
    x, y = centres[:, 0], centres[:, 1]
    return {name: np.asarray(shapely.contains_xy(geom, x, y), dtype=bool) for name, geom in ann.regions.items()}


def patch_truth(
    ann: Annotations,
    coords: np.ndarray,
    patch_size: tuple[float, float] | float,
    classes: Iterable[str] | None = None,
) -> np.ndarray:
    """(N,) bool: the patches whose centre lies inside any of `classes` (None: any annotated class)."""
    centres = patch_centres(coords, patch_size)
    masks = class_masks(ann, centres)
    out = np.zeros(len(centres), dtype=bool)
    for name in select_classes(ann, classes):
        out |= masks[name]
    return out


def resolve_patch_size(
    coords_attrs: Mapping[str, Any], where: str | Path | None, override: float | None = None
) -> tuple[float, float]:
    """(width, height) of a patch in level-0 pixels: the bag's coords attrs first, then `override`."""
    size = patch_size_from_attrs(dict(coords_attrs))
    if size is None and override is not None:
        size = (override, override)
    if size is None:
        raise InputError(
            where,
            "no patch size: the 'coords' attrs have no 'patch_size_level0' (or CLAM 'patch_size' with "
            "'downsample'); give the patch size in level-0 pixels",
        )
    return size


def bag_truth(
    annotations: str | Path | Annotations,
    bag: Bag,
    classes: Sequence[str] | None = None,
    patch_size: float | None = None,
) -> np.ndarray:
    """(N,) bool lesion truth of a bag from its annotations file (or already read annotations)."""
    ann = annotations if isinstance(annotations, Annotations) else read_annotations(annotations)
    if bag.coords is None:
        raise InputError(bag.path, "no 'coords' dataset: patches cannot be placed on the annotations")
    return patch_truth(ann, bag.coords, resolve_patch_size(bag.coords_attrs, bag.path, patch_size), classes)


def find_annotations(directory: Path, slide_id: str, dataset: str | None = None) -> Path | None:
    """`<dir>/<dataset>/<slide_id>.geojson` (the layout `wsisum-export` writes), else `<dir>/<slide_id>.geojson`
    (`.json` too); None when the slide has no annotations file."""
    folders = [directory / dataset, directory] if dataset else [directory]
    for folder in folders:
        for suffix in ANNOTATION_SUFFIXES:
            if (folder / f"{slide_id}{suffix}").is_file():
                return folder / f"{slide_id}{suffix}"
    return None
