"""wsisum-export: real summaries become valid QuPath GeoJSON / CSV squares at their patches' level-0 place."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.apps import run_app
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.errors import InputError
from wsisum.sampling.samplers import EntropySampler, RandomSampler
from wsisum.summarize.export import SAMPLER_COLOURS, export_summaries, patch_size_from_attrs, sampler_colour
from wsisum.summarize.run import summarize_cohort

PATCH = 512
BUDGET = 6
NO_SIZE = "dsB-000"  # its coords carry no patch size (a bag from a tool that does not write it)

_NUMBER_PAIR = {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}
_RGB = {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "integer", "minimum": 0, "maximum": 255}}
FEATURE_COLLECTION_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"},
                    "geometry": {
                        "type": "object",
                        "required": ["type", "coordinates"],
                        "properties": {
                            "type": {"const": "Polygon"},
                            "coordinates": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "array", "minItems": 4, "items": _NUMBER_PAIR},
                            },
                        },
                    },
                    "properties": {
                        "type": "object",
                        "required": ["objectType", "classification", "sampler", "budget", "rank", "score"],
                        "properties": {
                            "objectType": {"const": "annotation"},
                            "classification": {
                                "type": "object",
                                "required": ["name", "color"],
                                "properties": {"name": {"type": "string", "minLength": 1}, "color": _RGB},
                            },
                            "sampler": {"type": "string"},
                            "budget": {"type": ["integer", "string"]},
                            "rank": {"type": "integer", "minimum": 1},
                            "score": {"type": ["number", "null"]},
                        },
                    },
                },
            },
        },
    },
}


def _write_cohort(root: Path) -> None:
    """Two datasets of bags whose coords carry TRIDENT's `patch_size_level0`, except slide NO_SIZE."""
    rng = np.random.default_rng(0)
    for ds, sizes in {"dsA": [20, 9, 30], "dsB": [15, 12]}.items():
        for i, n in enumerate(sizes):
            sid = f"{ds}-{i:03d}"
            coords = np.stack([np.arange(n) % 5, np.arange(n) // 5], 1).astype(np.int64) * PATCH + 1000 * i
            coords_attrs = {} if sid == NO_SIZE else {"patch_size_level0": PATCH}
            feats = np.abs(rng.normal(size=(n, 8))).astype(np.float32)
            write_bag(root / "h5_files" / ds / f"{sid}.h5", feats, coords, coords_attrs=coords_attrs)


@pytest.fixture(scope="module")
def summaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Summary dirs written by the real summarize code: entropy (per-patch scores) and random (none)."""
    base = tmp_path_factory.mktemp("export")
    _write_cohort(base / "cohort")
    out = {}
    for sampler in (EntropySampler(0), RandomSampler(0)):
        out[sampler.name] = base / "summaries" / sampler.name
        report = summarize_cohort(Cohort(base / "cohort"), sampler, BUDGET, out[sampler.name], progress=False)
        assert report.ok and len(report.done) == 5
    return out


def _refuse_nan(constant: str) -> None:
    raise AssertionError(f"{constant} written into JSON")


def _load_geojson(path: Path) -> dict:
    collection = json.loads(path.read_text(), parse_constant=_refuse_nan)
    jsonschema.validate(collection, FEATURE_COLLECTION_SCHEMA, cls=jsonschema.Draft202012Validator)
    return collection


def _square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def run_export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app("export", *args, cwd=cwd, timeout=300, script=True)


def test_schema_is_valid_and_rejects_a_point() -> None:
    jsonschema.Draft202012Validator.check_schema(FEATURE_COLLECTION_SCHEMA)
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "FeatureCollection", "features": [point]}, FEATURE_COLLECTION_SCHEMA)


def test_geojson_squares_ranks_and_scores(tmp_path: Path, summaries: dict[str, Path]) -> None:
    out = tmp_path / "geojson"
    report = export_summaries(summaries["entropy"], out, "geojson", patch_size_level0=256)
    assert report.ok and len(report.done) == 5
    for summary_file in sorted(summaries["entropy"].glob("*/*.h5")):
        summ = read_bag(summary_file)
        side = 256 if summary_file.stem == NO_SIZE else PATCH  # the option only where the file has no size
        place = {
            int(i): (summ.coords[k].tolist(), float(summ.extras["scores"][k]))
            for k, i in enumerate(summ.extras["indices"])
        }
        collection = _load_geojson(out / summary_file.parent.name / f"{summary_file.stem}.geojson")
        props = [f["properties"] for f in collection["features"]]
        assert sorted(p["index"] for p in props) == sorted(place) and len(props) == BUDGET
        assert [p["rank"] for p in props] == list(range(1, BUDGET + 1))
        ranked_scores = [p["score"] for p in props]
        assert ranked_scores == sorted(ranked_scores, reverse=True)  # rank 1 = highest per-patch score
        for feature, p in zip(collection["features"], props):
            (x, y), score = place[p["index"]]
            assert feature["geometry"]["coordinates"] == [_square(x, y, side)]
            assert p["score"] == pytest.approx(score)
            assert p["sampler"] == "entropy" and p["budget"] == BUDGET and p["objectType"] == "annotation"
            assert p["classification"] == {"name": "entropy", "color": list(SAMPLER_COLOURS["entropy"])}


def test_csv_rows_without_scores(tmp_path: Path, summaries: dict[str, Path]) -> None:
    """Random keeps no per-patch score and its summary score is NaN: an empty CSV cell, a JSON null."""
    report = export_summaries(summaries["random"], tmp_path / "csv", "csv", patch_size_level0=PATCH)
    assert report.ok
    summary_file = summaries["random"] / "dsA" / "dsA-002.h5"
    summ = read_bag(summary_file)
    assert "scores" not in summ.extras and np.isnan(summ.attrs["score"])
    with open(tmp_path / "csv" / "dsA" / "dsA-002.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["x", "y", "width", "height", "score"]
    expected = [[str(x), str(y), str(PATCH), str(PATCH), ""] for x, y in summ.coords.tolist()]
    assert rows[1:] == expected  # stored order when there are no scores to rank by
    export_summaries(summary_file, tmp_path / "one", "geojson")
    props = [f["properties"] for f in _load_geojson(tmp_path / "one" / "dsA-002.geojson")["features"]]
    assert [p["rank"] for p in props] == list(range(1, BUDGET + 1)) and all(p["score"] is None for p in props)


def test_single_file_exports_only_that_slide(tmp_path: Path, summaries: dict[str, Path]) -> None:
    report = export_summaries(summaries["entropy"] / "dsB" / "dsB-001.h5", tmp_path / "out", "csv")
    assert report.ok and report.done == [str(tmp_path / "out" / "dsB-001.csv")]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["dsB-001.csv"]
    assert len((tmp_path / "out" / "dsB-001.csv").read_text().splitlines()) == 1 + BUDGET


def test_missing_patch_size_is_one_line_and_others_exported(tmp_path: Path, summaries: dict[str, Path]) -> None:
    out = tmp_path / "out"
    r = run_export(f"summaries={summaries['entropy']}", f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 1
    err_lines = [line for line in r.stderr.splitlines() if line.strip()]
    bad = summaries["entropy"] / "dsB" / f"{NO_SIZE}.h5"
    assert len(err_lines) == 1 and err_lines[0].startswith(f"error: {bad}: no patch size")
    assert "patch_size_level0=" in err_lines[0] and "Traceback" not in r.stderr
    assert f"4 exported, 1 failed -> {out}" in r.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [f"{ds}/{ds}-{i:03d}.geojson" for ds, i in [("dsA", 0), ("dsA", 1), ("dsA", 2), ("dsB", 1)]]


def test_patch_size_option_fills_in_on_the_command_line(tmp_path: Path, summaries: dict[str, Path]) -> None:
    out = tmp_path / "out"
    r = run_export(
        f"summaries={summaries['random']}", f"out_dir={out}", "format=csv", "patch_size_level0=224", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert f"5 exported, 0 failed -> {out}" in r.stdout
    for sid, side in [(NO_SIZE, "224"), ("dsB-001", str(PATCH))]:
        with open(out / "dsB" / f"{sid}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == BUDGET and {(row["width"], row["height"]) for row in rows} == {(side, side)}


def test_bad_options_fail_before_any_work(tmp_path: Path, summaries: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="format=shp"):
        export_summaries(summaries["random"], tmp_path / "a", "shp")
    with pytest.raises(InputError, match="patch_size_level0=-3"):
        export_summaries(summaries["random"], tmp_path / "b", "csv", patch_size_level0=-3)
    with pytest.raises(InputError, match="summaries not found"):
        export_summaries(tmp_path / "nowhere", tmp_path / "c", "csv")
    assert not any((tmp_path / d).exists() for d in "abc")


@pytest.mark.parametrize(
    ("attrs", "size"),
    [
        ({"patch_size_level0": 512, "patch_size": 256}, (512, 512)),  # TRIDENT: the level-0 size wins
        ({"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 4.0])}, (1024, 1024)),  # CLAM
        ({"patch_size": 256, "patch_level": 1, "downsample": np.array([4.0, 2.0])}, (1024, 512)),
        ({"patch_size": np.int64(256), "patch_level": 0}, (256, 256)),
        ({"patch_size": 256, "patch_level": 2}, None),  # a level > 0 with no downsample: unknown
        ({"patch_size_level0": np.nan}, None),
        ({}, None),
    ],
)
def test_patch_size_from_attrs(attrs: dict, size: tuple | None) -> None:
    assert patch_size_from_attrs(attrs) == size


def test_sampler_colours_are_stable_and_distinct() -> None:
    assert len(set(SAMPLER_COLOURS.values())) == len(SAMPLER_COLOURS)
    assert sampler_colour("wsisum") == SAMPLER_COLOURS["wsisum"]
    other = sampler_colour("my_sampler")
    assert other == sampler_colour("my_sampler") and all(0 <= c <= 255 for c in other)
