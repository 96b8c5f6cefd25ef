"""The modules that own one mechanism each: recipe markers, HDF5 headers, Markdown tables, the error
printer, peak memory and the run-dir names. Fast: no model, no cohort."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsisum.data.hdf5 import read_h5_header, reading_h5
from wsisum.data.markers import changed_keys, fingerprint, read_marker, recorded_fingerprint, write_marker
from wsisum.errors import InputError, print_error, print_failures
from wsisum.markdown import parse_pipe_table, pipe_table
from wsisum.memory import peak_rss_mb, rss_mb
from wsisum.run_layout import parse_summary_set_name, stage_marker, summary_set_name


def test_fingerprints_stay_those_of_finished_runs() -> None:
    # values of the former Study.fingerprint: a finished study's markers must keep matching
    assert fingerprint({"preset": {"name": "tiny"}, "seed": 0, "root": "x"}) == "5fa5d2db7c963f0a"
    assert fingerprint({"a": 1}, ["0123456789abcdef"]) == "62e522c2b961a903"
    assert fingerprint({"b": 2, "a": 1}) == fingerprint({"a": 1, "b": 2})


def test_markers_keep_their_format_and_refuse_damage(tmp_path: Path) -> None:
    compact = write_marker(tmp_path / "a" / "recipe.json", {"fingerprint": "f"})
    assert compact.read_text() == '{"fingerprint": "f"}'
    assert recorded_fingerprint(compact) == "f" and recorded_fingerprint(tmp_path / "absent.json") is None
    pretty = write_marker(tmp_path / "m.json", {"seed": 0}, indent=2)
    assert pretty.read_text() == '{\n  "seed": 0\n}\n'
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match=r"bad\.json: unreadable .*; delete it"):
        read_marker(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="is not a wsisum marker"):
        read_marker(tmp_path / "list.json")


def test_changed_keys_compares_values_or_their_text() -> None:
    assert changed_keys({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b"]
    assert changed_keys({"budget": np.int64(8)}, {"budget": 8, "seed": 0}, ["budget"], as_text=True) == []
    assert changed_keys({"x": 1}, {"y": 1}, ["x", "y"]) == ["x", "y"]


def test_h5_header_reads_shapes_and_attrs_without_data(tmp_path: Path) -> None:
    path = tmp_path / "bag.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((5, 3), np.float16))
        f.create_dataset("coords", data=np.zeros((5, 2), np.int64)).attrs["patch_size_level0"] = np.int64(256)
        f.attrs["sampler"] = "kmeans"
    header = read_h5_header(path, ("features", "coords", "morphology"), attrs=True, dataset_attrs=("coords",))
    assert header.require("features").shape == (5, 3) and str(header.datasets["features"].dtype) == "float16"
    assert header.datasets["coords"].attrs == {"patch_size_level0": 256} and header.attrs == {"sampler": "kmeans"}
    with pytest.raises(InputError, match=r"no 'morphology' dataset \(found: \['coords', 'features'\]\)"):
        header.require("morphology")
    (tmp_path / "cut.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match=r"cut.h5: unreadable HDF5 file \(truncated or corrupt\?\)"):
        read_h5_header(tmp_path / "cut.h5")
    with pytest.raises(InputError, match="cannot read 'x'"), reading_h5(path, "cannot read 'x'") as f:
        f["x"][()]


def test_pipe_table_renders_and_reads_back() -> None:
    text = pipe_table(["name", "value"], [["a", "1"], ["b", "2"]], right={1})
    assert text == "| name | value |\n|---|---:|\n| a | 1 |\n| b | 2 |\n"
    assert parse_pipe_table(text) == (["name", "value"], [["a", "1"], ["b", "2"]])


def test_the_error_printer_writes_one_line_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(InputError("x.h5", "empty bag"))
    print_failures(["a: bad", "b: bad"], "2 slide(s) failed:")
    print_failures(["c: bad"])
    captured = capsys.readouterr()
    assert captured.err == "error: x.h5: empty bag\n2 slide(s) failed:\n  a: bad\n  b: bad\nerror: c: bad\n"
    assert captured.out == ""


def test_memory_and_run_dir_names() -> None:
    assert peak_rss_mb() > 0 and rss_mb("NoSuchField") is None
    assert stage_marker("run", "summarize/kmeans_8") == Path("run/.stages/summarize__kmeans_8.json")
    assert summary_set_name("mosaic", None) == "mosaic_auto" and summary_set_name("kmeans", 8) == "kmeans_8"
    assert parse_summary_set_name("k_means_auto") == ("k_means", None) and parse_summary_set_name("full") is None
