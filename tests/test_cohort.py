"""Cohort discovery, labels and CLAM splits, including the real study's leaky BRCA split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.embeddings import read_embedding
from wsisum.data.labels import read_labels
from wsisum.data.splits import read_split, split_files, split_problems, write_split
from wsisum.errors import InputError


def test_discovers_datasets_slides_teachers(small_cohort) -> None:
    root, feats = small_cohort
    cohort = Cohort(root)
    assert cohort.datasets == ["dsA", "dsB"]
    assert len(cohort) == len(feats) == 12
    assert cohort.slide_ids("dsB") == [f"dsB-{i:03d}" for i in range(4)]
    assert cohort.teachers() == ["PRISM", "TITAN"]
    assert cohort.embedding_path("dsB-001", "TITAN") == root / "slide_embeddings/dsB/TITAN/dsB-001.h5"
    assert Cohort(root, datasets=["dsB"]).slide_ids() == cohort.slide_ids("dsB")


def test_cohort_errors(tmp_path: Path, small_cohort) -> None:
    root, _ = small_cohort
    with pytest.raises(InputError, match="cohort root not found"):
        Cohort(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no h5_files/ folder"):
        Cohort(tmp_path / "empty")
    with pytest.raises(InputError, match=r"no dataset folder \['dsZ'\]"):
        Cohort(root, datasets=["dsZ"])
    write_bag(root / "h5_files" / "dsB" / "dsA-000.h5", np.ones((2, 8)))
    with pytest.raises(InputError, match="slide id 'dsA-000' also in dataset 'dsA'"):
        Cohort(root)


def test_cohort_ignores_temp_files_and_points_at_summary_bags(tmp_path: Path, small_cohort) -> None:
    root, _ = small_cohort
    (root / "h5_files" / "dsA" / ".tmp-dsA-000.h5.x.part").write_bytes(b"")
    summaries = tmp_path / "summ"
    write_bag(summaries / "dsA" / "dsA-001.h5", np.ones((2, 8)))
    assert len(Cohort(root)) == 12
    c = Cohort(root, bag_dir=summaries)
    assert c.slide_ids() == ["dsA-001"] and c.teachers() == ["PRISM", "TITAN"]


def test_labels(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("slide_id,label,case_id\ns1,b,c1\ns2,a,c1\ns3,b,\n")
    lab = read_labels(p)
    assert lab.classes == ("a", "b") and lab.label_of == {"s1": 1, "s2": 0, "s3": 1}
    assert lab.case_of == {"s1": "c1", "s2": "c1", "s3": "s3"}
    assert read_labels(p, classes=["b", "a"]).label_of["s1"] == 0
    with pytest.raises(InputError, match=r"label\(s\) \['b'\] not among"):
        read_labels(p, classes=["a"])
    p.write_text("slide_id,label\ns1,a\ns1,a\n")
    with pytest.raises(InputError, match="1 duplicated slide id"):
        read_labels(p)
    p.write_text("slide,label\ns1,a\n")
    with pytest.raises(InputError, match="missing column"):
        read_labels(p)
    with pytest.raises(InputError, match="labels file not found"):
        read_labels(tmp_path / "none.csv")


def test_split_round_trip_and_problems(tmp_path: Path) -> None:
    p = write_split(tmp_path / "splits_3.csv", ["a", "b", "c"], ["d"], ["e", "f"])
    s = read_split(p)
    assert (s.fold, s.train, s.val, s.test) == (3, ("a", "b", "c"), ("d",), ("e", "f"))
    assert split_files(tmp_path) == {3: p}
    leaky = {"train": ["a", "b", "a"], "val": ["c"], "test": ["b", "x2"]}
    problems = split_problems(leaky, case_of={"x1": "X", "x2": "X", "c": "X"})
    assert problems == [
        "1 id(s) listed twice in train (a)",
        "1 slide id(s) in both train and test (b)",
        "1 case(s) with slides in both val and test (X: c (val) / x2 (test))",
    ]


def test_case_leakage_is_an_error(tmp_path: Path) -> None:
    p = write_split(tmp_path / "splits_0.csv", ["p1-a", "p2-a"], [], ["p1-b"])
    assert read_split(p).test == ("p1-b",)  # without case ids nothing is shared
    with pytest.raises(InputError, match=r"1 case\(s\) with slides in both train and test \(P1: p1-a"):
        read_split(p, case_of={"p1-a": "P1", "p1-b": "P1", "p2-a": "P2"})


def test_real_brca_split_leakage_is_caught(real_data: Path) -> None:
    path = real_data / "splits" / "BRCA_subtyping_100" / "splits_0.csv"
    with pytest.raises(InputError) as err:
        read_split(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "9 slide id(s) in both train and test" in msg
    assert "listed twice in train" in msg
    kept = read_split(path, allow_leakage=True)  # inspection mode: each id kept once, first partition wins
    all_ids = kept.train + kept.val + kept.test
    assert len(all_ids) == len(set(all_ids))


@pytest.mark.parametrize("task", ["BRACS", "CAMELYON17", "LUAD"])
def test_real_clean_splits_load(real_data: Path, task: str) -> None:
    files = split_files(real_data / "splits" / f"{task}_subtyping_100")
    assert sorted(files) == [0, 1, 2, 3, 4]
    s = read_split(files[0])
    assert len(s.train) > len(s.val) > 0 and len(s.test) > 0


def test_real_slide_loads_with_its_three_teachers(real_data: Path) -> None:
    cohort = Cohort(real_data / "wsisum_demo")
    assert cohort.datasets == ["tcga_brca"] and cohort.slide_ids() == ["TCGA-3C-AALI-01"]
    bag = read_bag(cohort["TCGA-3C-AALI-01"].bag_path)
    assert bag.features.shape == (500, 768) and bag.coords.shape == (500, 2)
    assert bag.coords_attrs.get("patch_size_level0") == 1024
    assert cohort.teachers() == ["CHIEF", "PRISM", "TITAN"]
    norms = {
        t: float(np.linalg.norm(read_embedding(cohort.embedding_path("TCGA-3C-AALI-01", t)))) for t in cohort.teachers()
    }
    dims = {t: read_embedding(cohort.embedding_path("TCGA-3C-AALI-01", t)).shape[0] for t in cohort.teachers()}
    assert dims == {"CHIEF": 768, "PRISM": 1280, "TITAN": 768}
    assert norms["PRISM"] > 4 * norms["CHIEF"]  # the scale gap the original never normalised
