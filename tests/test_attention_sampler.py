"""sampler=attention: top-K by the attention of a trained ABMIL checkpoint written by wsisum-evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_config
from wsisum.apps.evaluate import evaluate
from wsisum.data.bags import read_bag
from wsisum.data.cohort import Cohort
from wsisum.errors import InputError
from wsisum.models.mil import ABMIL
from wsisum.summarize.run import summarize_cohort
from wsisum.summarize.scorers import attention_sampler


def _abmil_checkpoint(path: Path, in_dim: int) -> Path:
    """A checkpoint in MILClassifier's format (untrained weights: ranking by attention still applies)."""
    torch.manual_seed(0)
    model = ABMIL(in_dim, 2)
    meta = {"target": "wsisum.models.mil.ABMIL", "init_args": dict(model.init_args), "class_names": ["a", "b"]}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "mil_model": meta}, path)
    return path


def test_trained_abmil_checkpoint_drives_the_sampler(tmp_path: Path, tiny_cohort: Path) -> None:
    out = tmp_path / "eval"
    cfg = compose_config(
        "evaluate",
        [f"data.root={tiny_cohort}", "task=syn_brca", "mil=abmil", "folds=[0]", "trainer.max_epochs=2", "logger=csv"],
        out,
    )
    evaluate(cfg)
    (ckpt,) = (out / "checkpoints" / "fold_0").glob("best-*.ckpt")
    sampler = attention_sampler(seed=0, ckpt_path=str(ckpt))
    report = summarize_cohort(
        Cohort(tiny_cohort, datasets=["syn_tcga_brca"]), sampler, 8, tmp_path / "s", progress=False
    )
    assert report.ok, report.failed
    some = sorted((tmp_path / "s" / "syn_tcga_brca").glob("*.h5"))[0]
    summ, src = read_bag(some), read_bag(tiny_cohort / "h5_files" / "syn_tcga_brca" / some.name)
    scores = sampler.scorer(src.features)
    top = np.sort(np.argsort(-scores, kind="stable")[:8])
    np.testing.assert_array_equal(summ.extras["indices"], top)
    np.testing.assert_allclose(np.sort(summ.extras["scores"]), np.sort(scores[top]), rtol=1e-5)


def test_attention_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs a trained attention-MIL model"):
        attention_sampler(ckpt_path=None)
    with pytest.raises(InputError, match="attention checkpoint not found"):
        attention_sampler(ckpt_path=str(tmp_path / "none.ckpt"))
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(InputError, match="unreadable checkpoint"):
        attention_sampler(ckpt_path=str(tmp_path / "junk.ckpt"))


def test_real_slide_attention(tmp_path: Path, real_data: Path) -> None:
    bag = read_bag(real_data / "wsisum_demo" / "h5_files" / "tcga_brca" / "TCGA-3C-AALI-01.h5")
    sampler = attention_sampler(ckpt_path=str(_abmil_checkpoint(tmp_path / "a.ckpt", 768)))
    sel = sampler.select(bag.features, 63, slide_id="TCGA-3C-AALI-01", coords=bag.coords)
    assert len(np.unique(sel.indices)) == 63
