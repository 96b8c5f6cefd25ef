"""The bad-input matrix through the real commands (docs/bad_input.md is its table).

One cohort holds every kind of broken slide at once, as a real cohort would: each command must name
each bad file on its own line, process every other slide, print no traceback and exit 1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, make_cohort
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.embeddings import write_embedding
from wsisum.data.splits import write_split

# slide -> (what is wrong, the words its error line must hold); dsB-000 lacks a teacher (not an error)
BAD_BAGS = {
    "dsA-000": ("missing file (dangling link)", "dsA-000.h5: file not found"),
    "dsA-001": ("truncated h5", "dsA-001.h5: unreadable HDF5 file (truncated or corrupt?)"),
    "dsA-002": ("wrong keys", "dsA-002.h5: no 'features' dataset (found: ['feats'])"),
    "dsA-003": ("coords/features count mismatch", "dsA-003.h5: 'coords' has 3 rows but 'features' has 6"),
    "dsA-004": (
        "NaN/Inf rows",
        "dsA-004.h5: 'features' has non-finite values (NaN/Inf) in 2 of 6 rows (first bad row 1)",
    ),
    "dsA-005": ("empty bag", "dsA-005.h5: empty bag: 'features' has 0 patches"),
    "dsA-006": ("mixed D", "dsA-006.h5: feature dim 5 differs from the cohort's 8"),
}
BAD_TEACHER = ("dsB-001 (TITAN)", "TITAN/dsB-001.h5: teacher TITAN embedding has dim 13, the other slides' have 12")
UNLABELLED = ("dsB-002", "slide 'dsB-002' has no label in")
N_SLIDES = 24
# the hand-made cohort's task, given on the command line as a user without a task YAML would
TASK = ["task.name=task", "task.labels=labels/task.csv", "task.splits=splits/task", "task.datasets=null"]
TASK += ["task.classes=[class0,class1]", "mil=meanpool", "threads=1"]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken") / "cohort"
    make_cohort(root, {"dsA": [6] * 10, "dsB": [6] * 14})
    bags = root / "h5_files" / "dsA"
    (bags / "dsA-000.h5").unlink()
    (bags / "dsA-000.h5").symlink_to(root / "moved_away" / "dsA-000.h5")
    data = (bags / "dsA-001.h5").read_bytes()
    (bags / "dsA-001.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(bags / "dsA-002.h5", "w") as f:
        f.create_dataset("feats", data=np.ones((6, 8), np.float32))
    with h5py.File(bags / "dsA-003.h5", "w") as f:
        f.create_dataset("features", data=np.ones((6, 8), np.float32))
        f.create_dataset("coords", data=np.zeros((3, 2), np.int64))
    nan = np.ones((6, 8), np.float32)
    nan[1, 2], nan[4, 0] = np.nan, np.inf
    write_bag(bags / "dsA-004.h5", nan)
    with h5py.File(bags / "dsA-005.h5", "w") as f:
        f.create_dataset("features", data=np.ones((0, 8), np.float32))
    write_bag(bags / "dsA-006.h5", np.ones((6, 5), np.float32))
    (root / "slide_embeddings" / "dsB" / "TITAN" / "dsB-000.h5").unlink()
    write_embedding(root / "slide_embeddings" / "dsB" / "TITAN" / "dsB-001.h5", np.ones(13))
    labels = pd.read_csv(root / "labels" / "task.csv")
    labels = labels[labels.slide_id != "dsB-002"]  # in the split, not labelled
    extra = pd.DataFrame([{"slide_id": "ghost-999", "label": "class0", "case_id": "case-ghost"}])
    pd.concat([labels, extra]).to_csv(root / "labels" / "task.csv", index=False)  # labelled, no bag: fine
    # bad slides spread over the parts; every part keeps good slides of both classes
    a, b = [f"dsA-{i:03d}" for i in range(10)], [f"dsB-{i:03d}" for i in range(14)]
    test = [a[0], a[4], a[7], a[8], b[3], b[4]]
    val = [a[1], b[2], a[9], b[5], b[6], b[7]]
    train = [s for s in a + b if s not in test + val]
    write_split(root / "splits" / "task" / "splits_0.csv", train, val, test)
    return root


def _run(app: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", f"wsisum.apps.{app}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def _error_lines(stderr: str, expected: list[str]) -> None:
    """Each expected message on exactly one line of the final report; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-4000:]
    report = stderr[stderr.rindex("skipped as bad input") :] if "skipped as bad input" in stderr else stderr
    for words in expected:
        hits = [line for line in report.splitlines() if words in line]
        assert len(hits) == 1, f"{words!r} on {len(hits)} lines of:\n{report}"


def test_summarize_names_each_bad_slide_and_does_the_rest(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "summaries"
    r = _run(
        "summarize",
        f"data.root={broken}",
        "sampler=kmeans",
        "budget=64",
        f"out_dir={out}",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    failing = [k for k in BAD_BAGS if k != "dsA-006"]  # summaries are per slide: another D is no problem here
    assert "6 slide(s) failed:" in r.stderr
    _error_lines(r.stderr, [BAD_BAGS[k][1] for k in failing])
    written = sorted(p.stem for p in out.rglob("*.h5"))
    assert written == sorted(f"dsA-{i:03d}" for i in range(6, 10)) + [f"dsB-{i:03d}" for i in range(14)]
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    small = read_bag(out / "dsB" / "dsB-003.h5")
    assert small.n_patches == 6 and sorted(small.extras["indices"]) == list(range(6))  # budget > bag: all kept
    assert bool(small.attrs["all_patches"])
    assert read_bag(out / "dsA" / "dsA-006.h5").dim == 5


@pytest.fixture(scope="module")
def trained(broken: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """wsisum-train on the broken cohort, once: its outcome and its run dir (whose checkpoint the
    `wsisum` sampler test reuses)."""
    cwd = tmp_path_factory.mktemp("train")
    run = cwd / "run"
    r = _run(
        "train",
        f"data.root={broken}",
        "model=tiny",
        "pool.size=6",
        "pool.n_clusters=2",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run}",
        cwd=cwd,
    )
    return r, run


def test_train_skips_each_bad_input_and_saves_the_model(trained) -> None:
    r, run = trained
    assert r.returncode == 1, r.stderr[-4000:]
    _error_lines(r.stderr, [words for _, words in BAD_BAGS.values()] + [BAD_TEACHER[1]])
    assert "dsB-000" not in r.stderr  # a missing teacher is expected and masked, not an error
    assert (run / "checkpoints" / "last.ckpt").is_file()
    listed = pd.read_csv(run / "bad_slides.csv")
    assert sorted(listed.slide_id) == sorted([*BAD_BAGS, BAD_TEACHER[0]])


def test_wsisum_sampler_names_slides_and_teachers_its_checkpoint_cannot_score(
    broken: Path, trained, tmp_path: Path
) -> None:
    ckpt = trained[1] / "checkpoints" / "last.ckpt"
    out = tmp_path / "summaries"
    r = _run(
        "summarize",
        f"data.root={broken}",
        "sampler=wsisum_search",
        f"sampler.ckpt_path={ckpt}",
        "sampler.teacher_weight=1.0",
        "sampler.n_candidates=8",
        "sampler.refine_rounds=0",
        "budget=3",
        f"out_dir={out}",
        "workers=0",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    expected = [words for _, words in BAD_BAGS.values() if "feature dim" not in words]
    expected += ["dsA-006.h5: feature dim 5 differs from the checkpoint's 8"]
    expected += ["TITAN/dsB-001.h5: teacher TITAN embedding has dim 13, the checkpoint's has 12"]
    _error_lines(r.stderr, expected)
    assert "8 slide(s) failed:" in r.stderr
    assert len(list(out.rglob("*.h5"))) == N_SLIDES - 8  # dsB-000 (no TITAN) scored on PRISM alone


def test_evaluate_skips_each_bad_slide_and_writes_metrics(broken: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = _run("evaluate", f"data.root={broken}", *TASK, "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-4000:]
    _error_lines(r.stderr, [words for _, words in BAD_BAGS.values()] + [UNLABELLED[1]])
    assert "ghost-999" not in r.stderr
    listed = pd.read_csv(run / "bad_slides.csv")
    assert sorted(listed.slide_id) == sorted([*BAD_BAGS, UNLABELLED[0]])
    metrics = pd.read_csv(run / "metrics.csv")
    n_test = metrics[metrics.metric == "n_test"].value.iloc[0]
    assert n_test == 4  # the 2 bad test slides left out, the 4 good ones scored
    assert len(pd.read_csv(run / "predictions" / "fold_0.csv")) == 4


def test_error_mode_stops_at_the_first_bad_slide(broken: Path, tmp_path: Path) -> None:
    r = _run("evaluate", f"data.root={broken}", *TASK, "data.on_bad_slide=error", cwd=tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert "dsB-002" in lines[0] and "no label" in lines[0]


def test_a_split_listing_a_slide_twice_stops_evaluation_before_any_fold(broken: Path, tmp_path: Path) -> None:
    split = broken / "splits" / "task" / "splits_1.csv"
    df = pd.read_csv(broken / "splits" / "task" / "splits_0.csv", index_col=0)
    train = df["train"].dropna().tolist()
    write_split(split, [*train, train[3]], df["val"].dropna().tolist(), df["test"].dropna().tolist())
    try:
        r = _run("evaluate", f"data.root={broken}", *TASK, "folds=[0,1]", cwd=tmp_path)
    finally:
        split.unlink()
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"error: {split}: ") and "listed twice in train" in lines[0] and train[3] in lines[0]
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before fold 0 trained


@pytest.mark.parametrize(
    ("app", "override", "words"),
    [
        ("summarize", "sampler=no_such_sampler", "Could not find 'sampler/no_such_sampler'"),
        ("summarize", "budget=abc", "error: budget=abc is not a positive whole number"),
        ("summarize", "budget=0", "error: budget=0 is not a positive whole number"),
        ("summarize", "no_such_key=1", "Key 'no_such_key' is not in struct"),
        ("summarize", "data.on_bad_slide=maybe", "error: on_bad_slide='maybe': use one of ['skip', 'error']"),
        ("evaluate", "budget=-3", "error: budget=-3 is not a positive whole number"),
        ("train", "model=huge", "Could not find 'model/huge'"),
    ],
)
def test_bad_overrides_are_one_message(broken: Path, tmp_path: Path, app: str, override: str, words: str) -> None:
    args = [f"data.root={broken}", override]
    if app == "summarize":
        args.append(f"out_dir={tmp_path / 'out'}")
    if app == "evaluate":
        args += [*TASK, f"bags={tmp_path}"]
    r = _run(app, *args, cwd=tmp_path)
    assert r.returncode != 0 and words in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.h5"))


def test_the_docs_table_lists_every_case() -> None:
    table = (REPO / "docs" / "bad_input.md").read_text()
    for what, _ in BAD_BAGS.values():
        assert f"| {what} |" in table, what
    for what in ("teacher missing", "teacher with another D", "labels name unknown slides", "slide without label"):
        assert f"| {what} |" in table, what
    for what in ("split with duplicates or leakage", "budget larger than the bag", "bad Hydra override"):
        assert f"| {what} |" in table, what


def test_every_fault_row_names_a_test_that_exists() -> None:
    faults = (REPO / "docs" / "bad_input.md").read_text().split("## Faults", 1)[1]
    rows = [line for line in faults.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]
    assert rows
    for row in rows:
        named, current = [], None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            current = ref[0] or current
            named.append((current, ref[1]))
        assert named, row
        for file, test in named:
            assert file and f"def {test}(" in (REPO / file).read_text(), (file, test)
