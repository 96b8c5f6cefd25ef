"""Shared fixtures: small hand-made cohorts, the synthetic `tiny` cohort, and the real shared data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from wsisum.data.bags import write_bag
from wsisum.data.embeddings import write_embedding
from wsisum.data.splits import write_split

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_data() -> Path:
    """`../shared/data/real` of the project; absent on a user's clone, so tests skip cleanly."""
    if not (SHARED / "wsisum_demo").is_dir():
        pytest.skip("../shared/data is not present (real-data tests run only beside the project)")
    return SHARED


def make_cohort(
    root: Path,
    sizes: dict[str, list[int]],
    dim: int = 8,
    teachers: dict[str, int] | None = None,
    seed: int = 0,
    n_classes: int = 2,
    folds: int = 1,
) -> dict[str, np.ndarray]:
    """A small cohort in the contract layout: `sizes` maps dataset -> patches per slide.

    Returns slide id -> features so tests can compare what loaders give back.
    """
    rng = np.random.default_rng(seed)
    teachers = {"TITAN": 12, "PRISM": 20} if teachers is None else teachers
    feats_of, rows = {}, []
    for ds, ns in sizes.items():
        for i, n in enumerate(ns):
            sid = f"{ds}-{i:03d}"
            feats = rng.normal(size=(n, dim)).astype(np.float32)
            coords = np.stack([np.arange(n) % 7, np.arange(n) // 7], 1).astype(np.int64) * 256
            write_bag(root / "h5_files" / ds / f"{sid}.h5", feats, coords, attrs={"slide_id": sid})
            for t, d in teachers.items():
                write_embedding(root / "slide_embeddings" / ds / t / f"{sid}.h5", rng.normal(size=d))
            feats_of[sid] = feats
            rows.append((sid, f"class{len(rows) % n_classes}", f"case-{sid}"))
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,label,case_id"] + [",".join(r) for r in rows]
    (root / "labels" / "task.csv").write_text("\n".join(lines) + "\n")
    ids = [r[0] for r in rows]
    for k in range(folds):
        perm = list(np.random.default_rng(k).permutation(ids))
        n_test = max(1, len(ids) // 4)
        write_split(
            root / "splits" / "task" / f"splits_{k}.csv", perm[2 * n_test :], perm[n_test : 2 * n_test], perm[:n_test]
        )
    return feats_of


@pytest.fixture
def small_cohort(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "cohort"
    feats = make_cohort(root, {"dsA": [5, 9, 3, 12, 7, 4, 8, 6], "dsB": [10, 2, 6, 11]})
    return root, feats


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic `tiny` preset, generated once per test session (read-only for tests)."""

    from wsisum.data.synthetic import generate_cohort
    from wsisum.data.synthetic.preset import load_preset

    root = tmp_path_factory.mktemp("tiny") / "cohort"
    preset = load_preset("tiny")  # composed with its shared part (configs/preset/base/)
    generate_cohort(root, preset, seed=0, progress=False)
    return root


@pytest.fixture
def tiny_copy(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny cohort that a test may damage."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_cohort, dst)
    return dst


def compose_config(name: str, overrides: list[str], output_dir: Path):
    """Compose a primary config as the app would, with the run dir pinned to `output_dir`."""
    from wsisum.apps._app import compose_app_config

    return compose_app_config(name, overrides, output_dir)
