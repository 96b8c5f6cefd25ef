"""Annotations in (GeoJSON as QuPath exports it), patch-level truth out; and the report's section on
the lesion share of each summary per annotated slide. The inverse of `wsisum-export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsisum.data.annotations import bag_truth, class_masks, patch_centres, patch_truth, read_annotations
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.errors import InputError
from wsisum.report import annotation_options, build_report
from wsisum.sampling.samplers import RandomSampler
from wsisum.summarize.export import export_summaries
from wsisum.summarize.run import summarize_cohort

PATCH = 256
COLS, ROWS = 6, 5  # a 6 x 5 grid of 256-px patches, index = row * COLS + col


def _grid(cols: int = COLS, rows: int = ROWS, patch: int = PATCH) -> np.ndarray:
    n = cols * rows
    return np.stack([np.arange(n) % cols, np.arange(n) // cols], 1).astype(np.int64) * patch


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geometry: dict, cls: str | None = None, name: str | None = None) -> dict:
    props: dict = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _indices(cols: list[int], rows: list[int]) -> set[int]:
    return {r * COLS + c for r in rows for c in cols}


# (a) the real annotated slide: its GeoJSON gives exactly the shipped patch-level truth


def test_hancock_annotation_gives_the_shipped_tumour_truth(real_data: Path) -> None:
    crop = real_data / "hancock_crop"
    if not crop.is_dir():
        pytest.skip("../shared/data/real/hancock_crop is not present")
    ann = read_annotations(crop / "annotations" / "PrimaryTumor_HE_484.geojson")
    assert ann.classes == ["Tumor"]
    truth = np.load(crop / "truth" / "PrimaryTumor_HE_484.npz")
    for encoder in ("hancock_conch", "hancock_uni"):
        bag = read_bag(crop / "h5_files" / encoder / "PrimaryTumor_HE_484.h5")
        assert (bag.coords == truth["coords"]).all()
        # TRIDENT wrote no patch size into these coords attrs; the README says 256 px at level 0
        with pytest.raises(InputError, match="no patch size"):
            bag_truth(ann, bag)
        mask = bag_truth(ann, bag, patch_size=256)  # centre = coords + 128
        assert mask.dtype == bool and mask.shape == (248,)
        assert (mask == truth["tumour"]).all()
        assert mask.sum() == 52
        assert not bag_truth(ann, bag, classes=["Stroma"], patch_size=256).any()
        assert (bag_truth(ann, bag, classes=["tumor"], patch_size=256) == truth["tumour"]).all()  # any case


# (b) hand-made geometry: a polygon with a hole, a MultiPolygon, a bare list and a single Feature


def test_polygon_with_hole_and_multipolygon_give_the_expected_mask(tmp_path: Path) -> None:
    coords = _grid()
    with_hole = {  # columns 0-2, rows 0-2, minus a hole around the middle patch (col 1, row 1)
        "type": "Polygon",
        "coordinates": [_square(0, 0, 768, 768), _square(300, 300, 460, 460)],
    }
    multi = {  # two separate squares: patch (col 5, row 0) and patches (cols 4-5, row 4)
        "type": "MultiPolygon",
        "coordinates": [[_square(1280, 0, 1536, 256)], [_square(1024, 1024, 1536, 1280)]],
    }
    point = {"type": "Point", "coordinates": [10, 10]}  # no polygon: skipped with a warning
    fc = {
        "type": "FeatureCollection",
        "features": [_feature(with_hole, "Tumor"), _feature(multi, name="Necrosis"), _feature(point, "Tumor")],
    }
    ann = read_annotations(_write(tmp_path / "s.geojson", fc))
    assert ann.classes == ["Necrosis", "Tumor"] and ann.skipped == 1
    masks = class_masks(ann, patch_centres(coords, PATCH))
    tumour = _indices([0, 1, 2], [0, 1, 2]) - {1 * COLS + 1}
    assert set(np.flatnonzero(masks["Tumor"])) == tumour
    assert set(np.flatnonzero(masks["Necrosis"])) == {5, 4 * COLS + 4, 4 * COLS + 5}
    assert set(np.flatnonzero(patch_truth(ann, coords, PATCH))) == tumour | {5, 28, 29}
    assert set(np.flatnonzero(patch_truth(ann, coords, PATCH, classes=["TUMOR"]))) == tumour
    # the same shapes as QuPath's bare list of features, and one Feature alone
    bare = read_annotations(_write(tmp_path / "bare.geojson", fc["features"]))
    assert (patch_truth(bare, coords, PATCH) == patch_truth(ann, coords, PATCH)).all()
    one = read_annotations(_write(tmp_path / "one.geojson", _feature(multi)))
    assert one.classes == ["Unclassified"]
    assert set(np.flatnonzero(patch_truth(one, coords, PATCH))) == {5, 28, 29}
    # (width, height) patches: the centre moves with each side
    assert (patch_centres(coords[:2], (256, 512)) == [[128, 256], [384, 256]]).all()


def test_a_self_intersecting_polygon_is_repaired_not_refused(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [512, 512], [512, 0], [0, 512], [0, 0]]]}
    ann = read_annotations(_write(tmp_path / "b.geojson", [_feature(bowtie, "Tumor")]))
    centres = np.array([[100.0, 256.0], [256.0, 100.0]])  # left wing in, top (between the wings) out
    assert class_masks(ann, centres)["Tumor"].tolist() == [True, False]


# (c) bad files: one line each, naming the file and the problem


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not JSON"),
        ({"type": "FeatureCollection", "features": []}, "no features"),
        ([], "no features"),
        (
            [_feature({"type": "Polygon", "coordinates": [[[0, 0], [10, "a"], [10, 10], [0, 0]]]}, "Tumor")],
            "feature 0: coordinates are not numbers",
        ),
        (
            [_feature({"type": "Polygon", "coordinates": [[[0, 0], [10, None], [10, 10], [0, 0]]]}, "Tumor")],
            "feature 0: coordinates are not numbers",
        ),
        (
            [_feature({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, float("nan")], [0, 0]]]})],
            "non-finite coordinates",
        ),
        ([_feature({"type": "Polygon", "coordinates": [[[0, 0], [10, 0]]]})], "a ring of 2 position"),
        ({"type": "Topology"}, "expected a FeatureCollection, a Feature or a list of Features"),
        ([_feature({"type": "Point", "coordinates": [1, 2]})], "no polygon among its 1 feature"),
        ([3], "feature 0: not a GeoJSON Feature"),
    ],
)
def test_bad_geojson_is_one_line_naming_the_file(tmp_path: Path, content: object, problem: str) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    path = _write(tmp_path / "bad.geojson", text)
    with pytest.raises(InputError) as info:
        read_annotations(path)
    line = str(info.value)
    assert line.startswith(f"{path}: ") and "\n" not in line
    assert problem in line


def test_a_missing_annotations_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.geojson: annotations file not found"):
        read_annotations(tmp_path / "nope.geojson")


# (d) the round trip: wsisum-export's GeoJSON of a summary, read back, marks exactly its patches


def test_exported_summary_read_back_marks_exactly_its_patches(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    coords = _grid(9, 7)
    for i in range(2):
        feats = np.random.default_rng(i).normal(size=(len(coords), 4)).astype(np.float32)
        write_bag(root / "h5_files" / "ds" / f"s{i}.h5", feats, coords, coords_attrs={"patch_size_level0": PATCH})
    out = tmp_path / "summaries"
    assert summarize_cohort(Cohort(root), RandomSampler(0), 12, out, progress=False).ok
    report = export_summaries(out, tmp_path / "export")
    assert report.ok and len(report.done) == 2
    for i in range(2):
        summary = read_bag(out / "ds" / f"s{i}.h5")
        geojson = tmp_path / "export" / "ds" / f"s{i}.geojson"
        mask = bag_truth(geojson, read_bag(root / "h5_files" / "ds" / f"s{i}.h5"))  # patch size from the attrs
        assert set(np.flatnonzero(mask)) == set(summary.extras["indices"].tolist())
        assert read_annotations(geojson).classes == ["random"]  # QuPath's classification: the sampler


# (e) the report section on a small run dir


def _report_cohort(root: Path) -> None:
    """ds/s1, ds/s2, ds/s3: 6 x 5 grids of 256-px patches (patch size in the coords attrs)."""
    for i, sid in enumerate(("s1", "s2", "s3")):
        feats = np.random.default_rng(i).normal(size=(COLS * ROWS, 4)).astype(np.float32)
        write_bag(root / "h5_files" / "ds" / f"{sid}.h5", feats, _grid(), coords_attrs={"patch_size_level0": PATCH})


def _summary(run: Path, root: Path, sid: str, idx: list[int], name: str) -> Path:
    src = read_bag(root / "h5_files" / "ds" / f"{sid}.h5")
    sampler, budget = name.split("_")
    attrs = {"sampler": sampler, "budget": int(budget), "seed": 0, "source": f"h5_files/ds/{sid}.h5", "n_source": 30}
    path = run / "summaries" / name / "ds" / f"{sid}.h5"
    return write_bag(path, src.features[idx], src.coords[idx], attrs=attrs, extras={"indices": np.array(idx)})


def _annotated_run(tmp_path: Path) -> tuple[Path, Path]:
    root, run, ann = tmp_path / "cohort", tmp_path / "run", tmp_path / "annotations"
    _report_cohort(root)
    tumour_s1 = _feature({"type": "Polygon", "coordinates": [_square(0, 0, 512, 512)]}, "Tumor")  # 4 patches
    stroma_s1 = _feature({"type": "Polygon", "coordinates": [_square(0, 512, 1536, 1280)]}, "Stroma")
    _write(ann / "s1.geojson", {"type": "FeatureCollection", "features": [tumour_s1, stroma_s1]})
    tumour_s2 = _feature({"type": "Polygon", "coordinates": [_square(1024, 256, 1280, 512)]}, "tumor")  # patch 10
    _write(ann / "ds" / "s2.geojson", [tumour_s2])  # the layout wsisum-export writes
    # s3 has no annotations: left out of the section
    _summary(run, root, "s1", [0, 1, 20], "random_3")  # 2 of 3 kept are tumour; the slide has 4 of 30
    _summary(run, root, "s2", [0, 1, 2], "random_3")  # misses its 1-patch tumour
    _summary(run, root, "s3", [0, 1, 2], "random_3")
    _summary(run, root, "s1", [0, 20, 21], "kmeans_3")  # 1 of 3
    (run / "study.json").write_text(json.dumps({"cohort_root": str(root)}))
    return run, ann


def test_report_section_gives_each_summary_its_lesion_share(tmp_path: Path) -> None:
    run, ann = _annotated_run(tmp_path)
    written = build_report(run, heatmap_slides=0, annotations=ann, lesion_classes=["Tumor"])
    df = pd.read_csv(written["annotated_lesions"])
    assert written["annotated_lesions"] == run / "report" / "annotated_lesions.csv"
    got = {
        (r.sampler, r.slide_id): (r.n_lesion, r.n_patches, r.n_kept_lesion, r.n_kept) for r in df.itertuples()
    }  # fmt: skip
    assert got == {("kmeans", "s1"): (4, 30, 1, 3), ("random", "s1"): (4, 30, 2, 3), ("random", "s2"): (1, 30, 0, 3)}
    ratio = {(r.sampler, r.slide_id): r.ratio for r in df.itertuples()}
    assert ratio[("random", "s1")] == pytest.approx((2 / 3) / (4 / 30))  # 5.0
    assert ratio[("random", "s2")] == 0.0
    assert ratio[("kmeans", "s1")] == pytest.approx(2.5)
    assert set(df["lesion_classes"]) == {"Tumor", "tumor"}  # Stroma does not count
    md = written["markdown"].read_text()
    assert "## Annotated slides: lesion share of each summary" in md
    assert "| random | 3 | 2 | 0.083 | 0.333 | 2.500 ± 3.536 |" in md  # mean ratio over s1 and s2
    assert "| kmeans | 3 | 1 | 0.133 | 0.333 | 2.500 |" in md
    assert "| ds | s1 | random | 3 | 4/30 | 0.133 | 2/3 | 0.667 | 5.000 |" in md
    # every annotated class counts by default: s1's stroma (rows 2-4) joins its tumour
    everything = pd.read_csv(build_report(run, heatmap_slides=0, annotations=ann)["annotated_lesions"])
    s1 = everything[(everything["sampler"] == "random") & (everything["slide_id"] == "s1")].iloc[0]
    assert (s1["n_lesion"], s1["n_kept_lesion"], s1["lesion_classes"]) == (4 + 18, 3, "Stroma;Tumor")


def test_report_without_annotations_or_matches_has_no_section(tmp_path: Path) -> None:
    run, ann = _annotated_run(tmp_path)
    written = build_report(run, heatmap_slides=0, annotations=ann)
    assert "annotated_lesions" in written
    for directory in (None, tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        _write(tmp_path / "empty" / "other_slide.geojson", [])  # matches no summarized slide: not even read
        written = build_report(run, heatmap_slides=0, annotations=directory)
        assert "annotated_lesions" not in written
        assert not (run / "report" / "annotated_lesions.csv").exists()  # the earlier report's CSV is gone
        assert "Annotated slides" not in written["markdown"].read_text()


def test_a_bad_annotation_file_is_named_in_the_section_and_the_rest_reported(tmp_path: Path) -> None:
    run, ann = _annotated_run(tmp_path)
    _write(ann / "ds" / "s2.geojson", "{broken")
    written = build_report(run, heatmap_slides=0, annotations=ann)
    df = pd.read_csv(written["annotated_lesions"])
    assert set(df["slide_id"]) == {"s1"}
    md = written["markdown"].read_text()
    assert f"Left out: `{ann / 'ds' / 's2.geojson'}`: not JSON" in md
    with pytest.raises(InputError, match="annotations directory not found"):
        build_report(run, annotations=tmp_path / "no_such_dir")


def test_report_and_pipeline_configs_pass_the_annotations_through(tmp_path: Path, capsys) -> None:
    from tests.conftest import compose_config
    from wsisum.apps.pipeline import stage_report
    from wsisum.apps.report import report

    run, ann = _annotated_run(tmp_path)
    cfg = compose_config("report", [f"run_dir={run}", f"annotations={ann}", "lesion_classes=[Tumor]"], tmp_path / "h")
    assert annotation_options(cfg) == {
        "annotations": str(ann),
        "lesion_classes": ["Tumor"],
        "annotation_patch_size": None,
    }
    assert "annotated_lesions" in report(cfg)
    (run / "report" / "annotated_lesions.csv").unlink()
    pipe = compose_config("pipeline", [f"report.annotations={ann}"], tmp_path / "p")
    stage_report(pipe, run, {})
    assert (run / "report" / "annotated_lesions.csv").is_file()
    bad = compose_config("report", [f"run_dir={run}", f"annotations={tmp_path / 'nope'}"], tmp_path / "h2")
    with pytest.raises(SystemExit) as info:
        report(bad)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {tmp_path / 'nope'}: annotations directory not found (expected <slide_id>.geojson files inside)"
    ]
