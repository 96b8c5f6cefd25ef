"""Cohorts as CLAM and TRIDENT wrote them, read in place: detected, summarized and evaluated end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_config
from wsisum.data.bags import read_bag, write_bag
from wsisum.data.cohort import Cohort
from wsisum.data.datamodules import PretrainDataModule
from wsisum.data.embeddings import read_embedding, write_embedding
from wsisum.data.layouts import detect
from wsisum.errors import InputError

DATASET = "syn_tcga_brca"
SETTING = "20x_256px_0px_overlap"  # TRIDENT's patch-setting folder name
SLIDE_SETTING = "20x_512px_0px_overlap"  # TITAN-style slide encoders run on 512 px patches


def _slides(tiny: Path) -> list[Path]:
    return sorted((tiny / "h5_files" / DATASET).glob("*.h5"))


@pytest.fixture(scope="module")
def clam_dir(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLAM's own output: FEATURES_DIR/h5_files/<slide>.h5 (coords attrs patch_size, patch_level) and
    pt_files/<slide>.pt (features only), no dataset folder."""
    root = tmp_path_factory.mktemp("clam") / "FEATURES_DIR"
    for i, src in enumerate(_slides(tiny_cohort)):
        bag = read_bag(src)
        if i % 3 == 0:  # some slides only as .pt (CLAM's features-only files): they still load
            (root / "pt_files").mkdir(parents=True, exist_ok=True)
            torch.save(torch.from_numpy(bag.features.astype(np.float32)), root / "pt_files" / f"{src.stem}.pt")
            continue
        write_bag(
            root / "h5_files" / src.name, bag.features, bag.coords, coords_attrs={"patch_size": 256, "patch_level": 0}
        )
        write_bag(root / "pt_files" / f"{src.stem}.pt", bag.features)
    return root


@pytest.fixture(scope="module")
def trident_dir(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRIDENT job dir: two patch encoders under one patch setting, slide encoders under another."""
    job = tmp_path_factory.mktemp("trident") / "JOB_DIR"
    attrs = {
        "patch_size": 256,
        "patch_size_level0": 512,
        "target_magnification": 20,
        "level0_magnification": 40,
        "overlap": 0,
    }
    for src in _slides(tiny_cohort):
        bag = read_bag(src)
        for enc in ("conch_v15", "uni_v1"):
            write_bag(job / SETTING / f"features_{enc}" / src.name, bag.features, bag.coords, coords_attrs=attrs)
        for teacher, folder in (("TITAN", "titan"), ("PRISM", "prism")):
            emb = read_embedding(tiny_cohort / "slide_embeddings" / DATASET / teacher / src.name)
            write_embedding(job / SLIDE_SETTING / f"slide_features_{folder}" / src.name, emb)
    (job / SETTING / "patches").mkdir()  # TRIDENT's coords folder beside the features: not a bag folder
    return job


def _task(tiny: Path) -> list[str]:
    """The labels and splits live outside the features folder, as absolute paths."""
    return [
        "task=syn_brca",
        "task.datasets=null",
        f"task.labels={tiny / 'labels' / 'brca.csv'}",
        f"task.splits={tiny / 'splits' / 'brca'}",
    ]


def _summarize_and_evaluate(root: Path, data: list[str], tiny: Path, tmp_path: Path) -> Path:
    from wsisum.apps.summarize import summarize
    from wsisum.evaluate.runner import run_evaluation

    out = tmp_path / "summaries"
    scfg = compose_config(
        "summarize",
        [f"data.root={root}", *data, "sampler=kmeans", "budget=8", f"out_dir={out}", "workers=0", "progress=false"],
        tmp_path / "sum",
    )
    report = summarize(scfg)
    assert report.ok and len(report.done) == len(_slides(tiny))
    overrides = [f"data.root={root}", *data, *_task(tiny), "mil=meanpool", "folds=[0]", "trainer.max_epochs=1"]
    fast = ["threads=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    for bags in ("full", str(out)):
        res = run_evaluation(compose_config("evaluate", [*fast, *overrides, f"bags={bags}"], tmp_path / "ev"))
        assert 0.0 <= res.mean("test_auroc") <= 1.0
    return out


def test_clam_flat_folder_is_detected_summarized_and_evaluated(clam_dir: Path, tiny_cohort: Path, tmp_path) -> None:
    assert detect(clam_dir) == "clam"
    cohort = Cohort(clam_dir)
    assert cohort.datasets == ["FEATURES_DIR"] and len(cohort) == len(_slides(tiny_cohort))
    pt_only = [s for s, r in cohort.slides.items() if r.bag_path.suffix == ".pt"]
    assert pt_only and all(not (clam_dir / "h5_files" / f"{s}.h5").exists() for s in pt_only)
    assert all(r.bag_path.suffix == ".h5" for s, r in cohort.slides.items() if s not in pt_only)  # h5 wins
    out = _summarize_and_evaluate(clam_dir, [], tiny_cohort, tmp_path)
    written = sorted(p.stem for p in (out / "FEATURES_DIR").glob("*.h5"))
    assert written == sorted(cohort.slides)  # summaries stay a <dataset>/<slide>.h5 bag directory
    kept = read_bag(out / "FEATURES_DIR" / f"{next(s for s in cohort.slides if s not in pt_only)}.h5")
    assert kept.coords_attrs["patch_size"] == 256 and kept.n_patches == 8


def test_trident_job_dir_reads_one_encoder_and_its_slide_encoders(
    trident_dir: Path, tiny_cohort: Path, tmp_path
) -> None:
    assert detect(trident_dir) == "trident"
    with pytest.raises(InputError, match=r"several patch encoders.*conch_v15.*uni_v1"):
        Cohort(trident_dir)  # one line listing the choices
    with pytest.raises(InputError, match=r"no features_virchow2/.*conch_v15"):
        Cohort(trident_dir, encoder="virchow2")
    cohort = Cohort(trident_dir, encoder="conch_v15")
    assert Cohort(trident_dir, encoder=f"{SETTING}/conch_v15").slides == cohort.slides
    assert cohort.datasets == ["JOB_DIR"] and cohort.teachers() == ["prism", "titan"]
    sid = next(iter(cohort.slides))
    assert cohort[sid].bag_path == trident_dir / SETTING / "features_conch_v15" / f"{sid}.h5"
    assert cohort.embedding_path(sid, "TITAN") == trident_dir / SLIDE_SETTING / "slide_features_titan" / f"{sid}.h5"
    dm = PretrainDataModule(trident_dir, teachers=["TITAN", "PRISM"], encoder="conch_v15", layout="trident")
    dm.setup()
    assert dm.teacher_dims == {"TITAN": 768, "PRISM": 1280} and not dm.skipped
    out = _summarize_and_evaluate(trident_dir, ["data.encoder=conch_v15"], tiny_cohort, tmp_path)
    summary = read_bag(out / "JOB_DIR" / f"{sid}.h5")
    assert summary.coords_attrs["patch_size_level0"] == 512 and summary.coords_attrs["target_magnification"] == 20
    assert summary.attrs["source"] == f"{SETTING}/features_conch_v15/{sid}.h5"  # relative to the job dir


def test_forced_layout_and_bad_layout_name(clam_dir: Path, trident_dir: Path) -> None:
    with pytest.raises(InputError, match="no h5_files/ folder"):
        Cohort(trident_dir, layout="contract")
    with pytest.raises(InputError, match="no TRIDENT features"):
        Cohort(clam_dir, layout="trident")
    with pytest.raises(InputError, match=r"data\.layout must be one of"):
        Cohort(clam_dir, layout="qupath")
    assert len(Cohort(clam_dir, layout="clam")) == len(Cohort(clam_dir))
