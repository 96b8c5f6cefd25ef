"""The synthetic cohort generator: contract layout, determinism, realism and resume behaviour."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from wsisum.data.bags import read_bag
from wsisum.data.embeddings import read_embedding
from wsisum.data.synthetic import MANIFEST_NAME, bracs_class_names, generate_cohort, parse_preset
from wsisum.data.synthetic.preset import load_preset
from wsisum.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def tiny_preset() -> dict:
    return load_preset("tiny")


def one_dataset(name: str, **overrides) -> dict:
    """The tiny preset reduced to one dataset, with overrides (for bigger, single-task cohorts)."""
    p = tiny_preset()
    p["datasets"] = {name: {**p["datasets"][name], **overrides}}
    p["paired_case_fraction"] = 0.0
    return p


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "cohort"
    return root, generate_cohort(root, tiny_preset(), seed=0, progress=False)


@pytest.fixture
def cohort_copy(cohort: tuple[Path, dict], tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(cohort[0], dst)
    return dst


def slides(manifest: dict) -> list[tuple[str, str, str]]:
    """(dataset, task, slide_id) of every slide."""
    return [(ds, manifest["dataset_tasks"][ds], s) for ds, ids in manifest["datasets"].items() for s in ids]


def labels_of(root: Path, task: str) -> pd.DataFrame:
    return pd.read_csv(root / "labels" / f"{task}.csv", dtype=str)


def arrays(root: Path, manifest: dict) -> dict[str, np.ndarray]:
    """Every array of a cohort, keyed by relative path + dataset name."""
    out = {}
    for ds, _, sid in slides(manifest):
        with h5py.File(root / "h5_files" / ds / f"{sid}.h5", "r") as f:
            for k in ("features", "coords", "morphology"):
                out[f"{ds}/{sid}/{k}"] = f[k][()]
        for t in manifest["teachers"]:
            out[f"{ds}/{t}/{sid}"] = read_embedding(root / "slide_embeddings" / ds / t / f"{sid}.h5")
    return out


def texts(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.glob("*/**/*.csv"))}


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


def test_manifest_describes_the_cohort(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    assert json.loads((root / MANIFEST_NAME).read_text()) == m
    assert m["complete"] is True and m["preset_name"] == "tiny" and m["seed"] == 0
    assert m["preset"] == tiny_preset()
    assert m["tasks"]["camelyon17"] == ["negative", "itc", "micro", "macro"]
    assert m["tasks"]["brca"] == ["IDC", "ILC"]
    assert m["tasks"]["bracs"] == ["N", "UDH", "FEA", "DCIS", "IC"]
    assert m["teachers"] == {"TITAN": 768, "CHIEF": 768, "PRISM": 1280, "GIGAPATH": 768}
    assert m["feature_dim"] == 32
    all_ids = [s for _, _, s in slides(m)]
    assert len(all_ids) == len(set(all_ids)) == m["counts"]["slides"]
    assert all(ln in m["morphologies"] for names in m["lesion_morphologies"].values() for ln in names)


def test_bags_follow_the_contract(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    preset = tiny_preset()
    stride = m["patch_size_level0"]
    assert stride == 512
    for ds, task, sid in slides(m):
        path = root / "h5_files" / ds / f"{sid}.h5"
        bag = read_bag(path)  # the project's own validating reader accepts it
        lo, hi = preset["datasets"][ds]["n_patches"]
        n = bag.n_patches
        assert lo <= n <= hi
        assert bag.features.shape == (n, 32) and bag.features.dtype == np.float16
        assert bag.coords.shape == (n, 2) and bag.coords.dtype == np.int64
        assert (bag.coords % stride == 0).all() and (bag.coords >= 0).all()
        assert len(np.unique(bag.coords, axis=0)) == n
        assert bag.coords_attrs["patch_size_level0"] == 512 and bag.coords_attrs["patch_size"] == 256
        assert bag.coords_attrs["patch_level"] == 0
        morph = bag.extras["morphology"]
        assert morph.shape == (n,) and morph.dtype == np.int16
        assert morph.min() >= 0 and morph.max() < len(m["morphologies"])
        assert bag.attrs["slide_id"] == sid and bag.attrs["dataset"] == ds
        assert bag.attrs["label"] in m["tasks"][task]
    assert not list(root.rglob("*.part"))


def test_every_slide_has_all_teachers_with_their_dims_and_norms(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    norms: dict[str, list[float]] = {t: [] for t in m["teachers"]}
    for ds, _, sid in slides(m):
        for t, dim in m["teachers"].items():
            path = root / "slide_embeddings" / ds / t / f"{sid}.h5"
            with h5py.File(path, "r") as f:
                assert f["features"].shape == (1, dim) and f["features"].dtype == np.float32
            norms[t].append(float(np.linalg.norm(read_embedding(path))))
    for t, values in norms.items():
        target = m["teacher_norms"][t]
        assert abs(np.mean(values) / target - 1) < 0.05
        assert all(0.7 < v / target < 1.3 for v in values)


def test_labels_cover_every_slide_with_class_names_and_cases(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    for ds, ids in m["datasets"].items():
        task = m["dataset_tasks"][ds]
        df = labels_of(root, task)
        assert list(df.columns) == ["slide_id", "label", "case_id"]
        assert sorted(df.slide_id) == sorted(ids)
        assert set(df.label) <= set(m["tasks"][task])
        assert df.groupby("case_id").label.nunique().max() == 1
        slides_per_case = df.groupby("case_id").size()
        assert slides_per_case.max() == 2 and (slides_per_case == 2).any()
        for sid, label in zip(df.slide_id, df.label):
            with h5py.File(root / "h5_files" / ds / f"{sid}.h5", "r") as f:
                assert f.attrs["label"] == label


def test_splits_are_clam_files_split_by_case(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    k = tiny_preset()["n_folds"]
    for ds, ids in m["datasets"].items():
        task = m["dataset_tasks"][ds]
        lab = labels_of(root, task).set_index("slide_id")
        files = sorted((root / "splits" / task).glob("splits_*.csv"))
        assert [f.name for f in files] == [f"splits_{i}.csv" for i in range(k)]
        tested: list[str] = []
        for f in files:
            assert f.read_text().splitlines()[0] == ",train,val,test"
            df = pd.read_csv(f, index_col=0)
            assert list(df.columns) == ["train", "val", "test"]
            assert list(df.index) == list(range(len(df)))
            parts = {c: list(df[c].dropna()) for c in df.columns}
            every = [s for v in parts.values() for s in v]
            assert sorted(every) == sorted(ids)  # each slide exactly once per fold
            cases = {c: set(lab.loc[v, "case_id"]) for c, v in parts.items()}
            assert not (cases["train"] & cases["val"] or cases["train"] & cases["test"] or cases["val"] & cases["test"])
            assert parts["val"] and parts["test"]
            counts = lab.groupby("label").case_id.nunique()
            test_classes = set(lab.loc[parts["test"], "label"])
            assert {c for c, n in counts.items() if n >= k} <= test_classes
            tested += parts["test"]
        assert sorted(tested) == sorted(ids)  # test folds partition the slides


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_cohort_other_seed_differs(cohort: tuple[Path, dict], tmp_path: Path) -> None:
    root, m = cohort
    again = generate_cohort(tmp_path / "again", tiny_preset(), seed=0, progress=False)
    assert again == m
    a, b = arrays(root, m), arrays(tmp_path / "again", again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert texts(root) == texts(tmp_path / "again")

    other = generate_cohort(tmp_path / "other", tiny_preset(), seed=1, progress=False)
    assert other["datasets"] == m["datasets"]  # ids come from the preset; content from the seed
    c = arrays(tmp_path / "other", other)
    feats = [k for k in a if k.endswith("/features") and k in c]
    assert not any(a[k].shape == c[k].shape and np.array_equal(a[k], c[k]) for k in feats)
    assert texts(root) != texts(tmp_path / "other")


# ------------------------------------------------------------------------------------------------
# Realism
# ------------------------------------------------------------------------------------------------


def grid_of(root: Path, ds: str, sid: str) -> tuple[np.ndarray, np.ndarray]:
    """Morphology on the patch grid (-1 off tissue) and the (row, col) of each patch."""
    with h5py.File(root / "h5_files" / ds / f"{sid}.h5", "r") as f:
        rc = f["coords"][()][:, ::-1] // f["coords"].attrs["patch_size_level0"]
        morph = f["morphology"][()]
    grid = np.full(rc.max(axis=0) + 1, -1)
    grid[rc[:, 0], rc[:, 1]] = morph
    return grid, rc


def test_morphology_regions_are_spatially_coherent(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    rng = np.random.default_rng(0)
    same_nb, same_rand = [], []
    for ds, _, sid in slides(m):
        grid, _ = grid_of(root, ds, sid)
        for a, b in ((grid[:, :-1], grid[:, 1:]), (grid[:-1, :], grid[1:, :])):
            both = (a >= 0) & (b >= 0)
            same_nb.append((a[both] == b[both]).mean())
        morph = grid[grid >= 0]
        i, j = rng.integers(len(morph), size=(2, 2000))
        same_rand.append((morph[i] == morph[j]).mean())
    assert np.mean(same_nb) > 0.8
    assert np.mean(same_nb) > np.mean(same_rand) + 0.3


def test_camelyon_lesion_size_follows_class_and_is_one_piece(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    ds, meta = "syn_camelyon17", m
    metastasis = meta["morphologies"].index("metastasis")
    lab = labels_of(root, "camelyon17").set_index("slide_id").label
    size: dict[str, list[int]] = {c: [] for c in meta["tasks"]["camelyon17"]}
    for sid in meta["datasets"][ds]:
        grid, _ = grid_of(root, ds, sid)
        lesion = grid == metastasis
        size[lab[sid]].append(int(lesion.sum()))
        if lesion.any():
            _, n_parts = ndimage.label(lesion, structure=np.ones((3, 3)))
            assert n_parts == 1, f"{sid}: lesion in {n_parts} pieces"
    assert all(s == 0 for s in size["negative"])
    assert size["itc"] and all(1 <= s <= 5 for s in size["itc"])
    assert size["micro"] and all(s >= 6 for s in size["micro"])
    assert size["macro"] and min(size["macro"]) > max(size["micro"])


def test_brca_and_bracs_slides_carry_their_lesion(cohort: tuple[Path, dict]) -> None:
    root, m = cohort
    names = m["morphologies"]
    for ds, task in (("syn_tcga_brca", "brca"), ("syn_bracs", "bracs")):
        lab = labels_of(root, task).set_index("slide_id").label
        for sid in m["datasets"][ds]:
            grid, _ = grid_of(root, ds, sid)
            own = names.index(lab[sid].lower() if task == "brca" else f"lesion_{lab[sid]}")
            frac = (grid == own).sum() / (grid >= 0).sum()
            lo, hi = (0.15, 0.6) if task == "brca" else (0.05, 0.35)
            assert lo - 0.02 <= frac <= hi + 0.02, (sid, frac)


def ridge_cv_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5) -> np.ndarray:
    """Out-of-fold scores of a ridge classifier, folds by case (closed form: no sklearn needed)."""
    cases = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(0).permutation(cases), np.arange(len(cases)) % folds))
    fold = np.array([fold_of[g] for g in groups])
    scores = np.zeros(len(y))
    for k in range(folds):
        tr, te = fold != k, fold == k
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        a = (x[tr] - mu) / sd
        w = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ (2.0 * y[tr] - 1))
        scores[te] = ((x[te] - mu) / sd) @ w
    return scores


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC: probability that a positive outranks a negative."""
    pos, neg = scores[y == 1], scores[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def slide_table(root: Path, m: dict, ds: str, teacher: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Mean-pooled features, teacher embeddings, labels and cases of one dataset."""
    task = m["dataset_tasks"][ds]
    lab = labels_of(root, task).set_index("slide_id")
    ids = m["datasets"][ds]
    pooled = np.stack([read_bag(root / "h5_files" / ds / f"{s}.h5").features.astype(np.float64).mean(0) for s in ids])
    emb = np.stack([read_embedding(root / "slide_embeddings" / ds / teacher / f"{s}.h5") for s in ids])
    return pooled, emb, list(lab.loc[ids, "label"]), list(lab.loc[ids, "case_id"])


@pytest.fixture(scope="module")
def brca_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("brca") / "cohort"
    preset = one_dataset("syn_tcga_brca", n_slides=80, n_patches=[60, 150])
    preset["morphology"]["subtype_separation"] = 1.5  # nearer the demo preset's difficulty
    return root, generate_cohort(root, preset, seed=0, progress=False)


def test_brca_task_is_learnable_from_mean_pooled_features(brca_cohort: tuple[Path, dict]) -> None:
    root, m = brca_cohort
    pooled, _, labels, cases = slide_table(root, m, "syn_tcga_brca", "TITAN")
    y = np.array([lab == "ILC" for lab in labels], dtype=float)
    assert auc(ridge_cv_scores(pooled, y, np.array(cases)), y) > 0.75


def test_teachers_carry_label_information_but_not_all(brca_cohort: tuple[Path, dict]) -> None:
    root, m = brca_cohort
    aucs = []
    for t in m["teachers"]:
        _, emb, labels, cases = slide_table(root, m, "syn_tcga_brca", t)
        y = np.array([lab == "ILC" for lab in labels], dtype=float)
        aucs.append(auc(ridge_cv_scores(emb, y, np.array(cases)), y))
    assert min(aucs) > 0.6, aucs
    assert max(aucs) < 0.999, aucs  # noisy: a teacher is a hint, not the answer


def test_a_few_itc_patches_do_not_show_in_the_mean(tmp_path: Path) -> None:
    """Why summarization matters: ITC slides look negative once every patch is averaged."""
    preset = one_dataset("syn_camelyon17", n_slides=80, n_patches=[100, 300])
    preset["datasets"]["syn_camelyon17"]["class_fractions"] = {"negative": 1, "itc": 1, "micro": 0, "macro": 0}
    m = generate_cohort(tmp_path / "c17", preset, seed=0, progress=False)
    pooled, _, labels, cases = slide_table(tmp_path / "c17", m, "syn_camelyon17", "TITAN")
    y = np.array([lab == "itc" for lab in labels], dtype=float)
    assert auc(ridge_cv_scores(pooled, y, np.array(cases)), y) < 0.75


def test_bracs_class_names() -> None:
    assert bracs_class_names(5) == ("N", "UDH", "FEA", "DCIS", "IC")
    assert bracs_class_names(7) == ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC")
    assert bracs_class_names(2) == ("N", "IC")
    assert bracs_class_names(9)[-1] == "G8"


# ------------------------------------------------------------------------------------------------
# Resume, skip, refuse, overwrite
# ------------------------------------------------------------------------------------------------


def test_complete_cohort_is_skipped_untouched(cohort: tuple[Path, dict], cohort_copy: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in cohort_copy.rglob("*") if p.is_file()}
    assert generate_cohort(cohort_copy, tiny_preset(), seed=0, progress=False) == cohort[1]
    assert before == {p: p.stat().st_mtime_ns for p in cohort_copy.rglob("*") if p.is_file()}


def test_killed_run_resumes_to_identical_files(cohort: tuple[Path, dict], cohort_copy: Path) -> None:
    root, m = cohort
    (cohort_copy / MANIFEST_NAME).unlink()
    removed = [
        cohort_copy / "h5_files" / "syn_bracs" / f"{m['datasets']['syn_bracs'][3]}.h5",
        cohort_copy / "slide_embeddings" / "syn_camelyon17" / "PRISM" / f"{m['datasets']['syn_camelyon17'][0]}.h5",
        cohort_copy / "labels" / "brca.csv",
        cohort_copy / "splits" / "camelyon17" / "splits_1.csv",
    ]
    for p in removed:
        p.unlink()
    stale = cohort_copy / "h5_files" / "syn_bracs" / ".tmp-x.h5.123.part"
    stale.write_bytes(b"half a file")
    kept = cohort_copy / "h5_files" / "syn_bracs" / f"{m['datasets']['syn_bracs'][0]}.h5"
    kept_mtime = kept.stat().st_mtime_ns
    assert generate_cohort(cohort_copy, tiny_preset(), seed=0, progress=False) == m
    assert all(p.exists() for p in removed) and not stale.exists()
    assert kept.stat().st_mtime_ns == kept_mtime  # present files are skipped, not rewritten
    a, b = arrays(root, m), arrays(cohort_copy, m)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert texts(root) == texts(cohort_copy)


def test_other_seed_on_a_cohort_is_refused_in_one_line(cohort_copy: Path) -> None:
    with pytest.raises(InputError) as err:
        generate_cohort(cohort_copy, tiny_preset(), seed=5, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(cohort_copy) in msg and "overwrite=true" in msg
    (cohort_copy / MANIFEST_NAME).unlink()  # a partial cohort of seed 0 is refused as well
    with pytest.raises(InputError, match="overwrite=true"):
        generate_cohort(cohort_copy, tiny_preset(), seed=5, progress=False)


def test_overwrite_replaces_only_the_cohort(cohort: tuple[Path, dict], cohort_copy: Path) -> None:
    preset = tiny_preset()
    del preset["datasets"]["syn_bracs"]
    (cohort_copy / "notes.txt").write_text("mine")
    m = generate_cohort(cohort_copy, preset, seed=3, overwrite=True, progress=False)
    assert m["seed"] == 3 and set(m["datasets"]) == {"syn_camelyon17", "syn_tcga_brca"}
    assert not (cohort_copy / "h5_files" / "syn_bracs").exists()
    assert not (cohort_copy / "labels" / "bracs.csv").exists()
    assert (cohort_copy / "notes.txt").read_text() == "mine"


def test_refuses_a_cohort_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "real" / "h5_files" / "CAMELYON17"
    foreign.mkdir(parents=True)
    (foreign / "patient_000_node_0.h5").write_bytes(b"")
    for overwrite in (False, True):
        with pytest.raises(InputError, match="not written by wsisum-synth"):
            generate_cohort(tmp_path / "real", tiny_preset(), overwrite=overwrite, progress=False)
    assert (foreign / "patient_000_node_0.h5").exists()


# ------------------------------------------------------------------------------------------------
# Preset validation
# ------------------------------------------------------------------------------------------------


def test_all_presets_parse() -> None:
    for path in sorted((REPO / "configs" / "preset").glob("*.yaml")):
        assert path.read_text().startswith("# @package preset\n")
        preset = parse_preset(load_preset(path.stem))
        assert preset.name == path.stem


@pytest.mark.parametrize("part", ["common", "syn_bracs"])
def test_the_shared_part_of_the_presets_is_not_a_preset(tmp_path: Path, part: str) -> None:
    with pytest.raises(InputError) as err:
        generate_cohort(tmp_path / "x", load_preset(f"base/{part}"), progress=False)
    assert "preset.name is not set" in str(err.value) and "\n" not in str(err.value)
    preset = tiny_preset()
    preset["datasets"]["syn_bracs"]["n_slides"] = "???"  # what a preset based on base/ forgot to set
    with pytest.raises(InputError, match=r"preset\.datasets\.syn_bracs\.n_slides: not set"):
        generate_cohort(tmp_path / "x", preset, progress=False)
    assert not (tmp_path / "x").exists()


def _set(p: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for k in parents:
        p = p[k]
    if value is KeyError:
        del p[last]
    else:
        p[last] = value


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("feature_dim", KeyError, "feature_dim is missing"),
        ("feature_dim", 0, "feature_dim"),
        ("feature_dtype", "float64", "feature_dtype"),
        ("colour", 1, "unknown key"),
        ("morphology.rank", 99, "rank"),
        ("tissue.pieces", [3, 1], "pieces"),
        ("teachers.TITAN.dim", "big", "TITAN.dim"),
        ("datasets.syn_bracs.kind", "luad", "kind"),
        ("datasets.syn_bracs.n_slides", 2, "folds"),
        ("datasets.syn_tcga_brca.class_fractions", {"IDC": 1}, "class_fractions"),
        ("datasets.syn_tcga_brca.itc_patches", [1, 5], "unknown key"),
        ("datasets.syn_camelyon17.macro_min_patches", 3, "macro_min_patches"),
        ("datasets.syn_camelyon17.background", {"bone": 1.0}, "bone"),
        ("datasets.syn_bracs.prefix", "C17", "prefix"),
    ],
)
def test_bad_preset_values_fail_with_one_clear_line(tmp_path: Path, key: str, value, expect: str) -> None:
    preset = copy.deepcopy(tiny_preset())
    _set(preset, key, value)
    with pytest.raises(InputError) as err:
        generate_cohort(tmp_path / "x", preset, progress=False)
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_bad_seed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="seed"):
        generate_cohort(tmp_path / "x", tiny_preset(), seed=-1, progress=False)


def test_edited_preset_of_the_same_name_is_refused(cohort_copy: Path) -> None:
    preset = tiny_preset()
    preset["features"]["noise"] = 0.3
    with pytest.raises(InputError, match=r"other preset values \(features\)"):
        generate_cohort(cohort_copy, preset, seed=0, progress=False)
