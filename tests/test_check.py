"""`wsisum-check`: a clean cohort passes with the right counts, a broken one has every problem listed in
one run (exit 1), and a large cohort is scanned from headers only."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.apps import run_app
from tests.conftest import make_cohort
from wsisum.data import check as check_module
from wsisum.data.bags import write_bag
from wsisum.data.check import HeaderScan, check_cohort, teacher_info
from wsisum.data.embeddings import write_embedding
from wsisum.data.splits import write_split
from wsisum.errors import InputError


def _rows(report) -> dict[tuple[str, str], str]:
    return {(section, item): value for section, item, value in report.rows}


def test_clean_cohort_passes_with_right_counts(small_cohort) -> None:
    root, feats = small_cohort
    report = check_cohort(root, task={"name": "task"})
    assert report.problems == [] and not report.fatal
    rows = _rows(report)
    assert rows["slides", "dsA"] == "8" and rows["slides", "dsB"] == "4" and rows["slides", "total"] == "12"
    sizes = sorted(f.shape[0] for f in feats.values())
    assert rows["patches", "min / median / max"] == f"{sizes[0]} / {np.median(sizes):g} / {sizes[-1]}"
    assert rows["features", "D"] == "8" and rows["features", "dtype"] == "float32"
    assert rows["teacher", "TITAN"] == "12 / 12 slides (100%); D_t 12; float32"
    assert rows["teacher", "PRISM"] == "12 / 12 slides (100%); D_t 20; float32"
    assert rows["labels", "class0"] == "6" and rows["labels", "class1"] == "6"
    assert rows["split", "splits_0.csv"] == "train 6 / val 3 / test 3; clean"
    assert report.summary() == "cohort OK: 12 slide(s) checked"


def test_named_teachers_are_the_ones_checked(small_cohort) -> None:
    root, _ = small_cohort
    report = check_cohort(root, teachers=["TITAN", "CHIEF", "PRISM"])
    assert [item for section, item, _ in report.rows if section == "teacher"] == ["TITAN", "CHIEF", "PRISM"]
    assert report.fatal and any(p.fatal and "teacher CHIEF: no embedding file" in p.line() for p in report.problems)


def test_teacher_info_reads_both_shapes_and_refuses_others(tmp_path: Path) -> None:
    write_embedding(tmp_path / "row.h5", np.ones(7))
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f.create_dataset("features", data=np.ones(5, np.float16))
    with h5py.File(tmp_path / "matrix.h5", "w") as f:
        f.create_dataset("features", data=np.ones((3, 5), np.float32))
    assert (teacher_info(tmp_path / "row.h5").dim, teacher_info(tmp_path / "flat.h5").dtype) == (7, "float16")
    with pytest.raises(InputError, match=r"must have shape \(1, D\) or \(D,\), got \(3, 5\)"):
        teacher_info(tmp_path / "matrix.h5")
    (tmp_path / "cut.h5").write_bytes((tmp_path / "row.h5").read_bytes()[:100])
    with pytest.raises(InputError, match="unreadable HDF5"):
        teacher_info(tmp_path / "cut.h5")
    with pytest.raises(InputError, match="file not found"):
        teacher_info(tmp_path / "absent.h5")


def _break(root: Path) -> dict[str, str]:
    """Damage a clean cohort six ways at once; returns what each problem line must hold."""
    bags = root / "h5_files" / "dsA"
    data = (bags / "dsA-001.h5").read_bytes()
    (bags / "dsA-001.h5").write_bytes(data[: len(data) // 2])
    write_bag(bags / "dsA-002.h5", np.ones((6, 5), np.float32))
    (root / "slide_embeddings" / "dsA" / "TITAN" / "dsA-003.h5").unlink()
    write_embedding(root / "slide_embeddings" / "dsB" / "PRISM" / "dsB-001.h5", np.ones(13))
    with (root / "labels" / "task.csv").open("a") as f:
        f.write("ghost-slide,class0,case-ghost\n")
    ids = [f"dsA-{i:03d}" for i in range(8)] + [f"dsB-{i:03d}" for i in range(4)]
    write_split(root / "splits" / "task" / "splits_1.csv", ids[:8], ids[8:10], [*ids[10:], ids[0]])
    return {
        "truncated bag": "problem: " + str(bags / "dsA-001.h5") + ": unreadable HDF5 file (truncated or corrupt?)",
        "bag with another D": "problem: " + str(bags / "dsA-002.h5") + ": feature dim 5 differs from the cohort's 8",
        "missing teacher file": "warning: " + str(root / "slide_embeddings" / "dsA" / "TITAN") + ": no file for 1 of 8",
        "teacher with wrong dims": "dsB-001.h5: teacher PRISM embedding has dim 13, the other slides' have 20",
        "labels row without bag": "1 labelled slide(s) have no bag and are in no split (ghost-slide)",
        "leaky split": "splits_1.csv: leaky split: 1 slide id(s) in both train and test (dsA-000)",
    }


def test_broken_cohort_lists_every_problem_in_one_run(small_cohort, tmp_path: Path) -> None:
    root, _ = small_cohort
    expected = _break(root)
    configs = tmp_path / "my_configs"
    (configs / "task").mkdir(parents=True)
    (configs / "task" / "task.yaml").write_text("classes: [class0, class1]\n")  # the name comes from task=task
    args = ["--config-dir", str(configs), f"data.root={root}", "task=task", "progress=false"]
    r = run_app("check", *args, cwd=tmp_path, timeout=300, script=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    for name, words in expected.items():
        assert any(words in line for line in lines), f"{name} not reported: {words!r} in\n{r.stderr}"
    assert "missing teacher file" in expected and any("dsA-003" in line for line in lines)
    assert lines[-1] == "4 problem(s) and 2 warning(s); a later stage would fail"
    assert "splits_1.csv" in r.stdout and "train 8 / val 2 / test 2; LEAKY" in r.stdout  # each id once


def test_check_runs_with_a_task_of_the_config_group(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    make_cohort(root, {"syn_bracs": [4] * 6}, n_classes=5)
    (root / "labels" / "task.csv").rename(root / "labels" / "bracs.csv")
    grades = ["N", "UDH", "FEA", "DCIS", "IC", "N"]
    rows = "".join(f"syn_bracs-{i:03d},{grade}\n" for i, grade in enumerate(grades))
    (root / "labels" / "bracs.csv").write_text("slide_id,label\n" + rows)
    (root / "splits" / "task").rename(root / "splits" / "bracs")
    args = [f"data.root={root}", "task=syn_bracs", "teachers=titan"]
    r = run_app("check", *args, cwd=tmp_path, timeout=300, script=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "cohort OK: 6 slide(s) checked"
    assert "TITAN" in r.stdout and "PRISM" not in r.stdout and "DCIS" in r.stdout


def test_two_thousand_slides_are_scanned_from_headers(tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    make_cohort(root, {"dsA": [3] * 1000, "dsB": [2] * 1000}, dim=4, teachers={"TITAN": 6, "CHIEF": 3})
    report = check_cohort(root, task={"name": "task"}, workers=1)
    assert report.problems == []
    rows = _rows(report)
    assert (rows["slides", "total"], rows["patches", "min / median / max"]) == ("2000", "2 / 2.5 / 3")
    assert rows["teacher", "CHIEF"] == "2000 / 2000 slides (100%); D_t 3; float32"
    assert rows["split", "splits_0.csv"] == "train 1000 / val 500 / test 500; clean"


def test_worker_processes_read_what_this_process_reads(small_cohort, monkeypatch) -> None:
    root, _ = small_cohort
    _break(root)
    paths = sorted((root / "h5_files").rglob("*.h5"))
    serial = HeaderScan(workers=1).read("bag", paths, "bags")
    monkeypatch.setattr(check_module, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(check_module, "CHUNK", 5)
    with HeaderScan(workers=2) as scan:
        parallel = scan.read("bag", paths, "bags")
        assert scan.pool is not None
    infos, problems = serial
    assert parallel == serial and len(infos) == len(paths) - 1
    assert [p.path for p in problems] == [str(root / "h5_files" / "dsA" / "dsA-001.h5")]


def test_run_check_takes_the_apps_config(small_cohort, tmp_path: Path) -> None:
    """What the pipeline calls: the composed `check` config, teachers from the teachers group."""
    from tests.conftest import compose_config
    from wsisum.apps.check import run_check

    root, _ = small_cohort
    cfg = compose_config("check", [f"data.root={root}", "teachers=prism", "+task.name=task"], tmp_path)
    report = run_check(cfg)
    assert not report.fatal and report.n_slides == 12
    assert [item for section, item, _ in report.rows if section in ("teacher", "split")] == ["PRISM", "splits_0.csv"]


def test_the_pipeline_checks_the_cohort_before_its_first_stage(small_cohort, tmp_path: Path) -> None:
    """A cohort a later stage would fail on stops the study before pretraining, every problem listed."""
    root, _ = small_cohort
    (root / "h5_files" / "dsA" / "dsA-001.h5").write_bytes(b"not hdf5")
    write_embedding(root / "slide_embeddings" / "dsB" / "PRISM" / "dsB-001.h5", np.ones(13))
    run_dir = tmp_path / "study"
    (tmp_path / "my_configs" / "task").mkdir(parents=True)
    (tmp_path / "my_configs" / "task" / "task.yaml").write_text("name: task\n")  # the user's own task
    args = [
        "--config-dir",
        str(tmp_path / "my_configs"),
        "cohort.preset=null",
        f"cohort.root={root}",
        f"run_dir={run_dir}",
        "evaluate.tasks=[task]",
    ]
    r = run_app("pipeline", *args, cwd=tmp_path, timeout=300, script=True)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "dsA-001.h5: unreadable HDF5 file" in r.stderr and "PRISM/dsB-001.h5" in r.stderr
    assert "a later stage would fail" in r.stderr and "Traceback" not in r.stderr
    assert not (run_dir / "train").exists()  # stopped before the first long stage
