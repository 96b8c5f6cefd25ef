"""Teacher fusion: standardisation equalises the teachers; PCA saved as a pickle-free npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsisum.errors import InputError
from wsisum.teachers.fusion import TeacherFusion, fit_fusion, fit_training_fusion


def _teachers(n=60, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    return {
        "TITAN": [r for r in z @ rng.normal(size=(5, 48)) * 2.0],
        "CHIEF": [r for r in np.tanh(z @ rng.normal(size=(5, 48))) * 0.5],
        "PRISM": [r for r in z @ rng.normal(size=(5, 80)) * 6.0 + 3.0],
    }


def test_standardisation_equalises_energy() -> None:
    emb = _teachers()
    fusion = fit_fusion(emb, mode="pca", out_dim=16)
    raw = {t: np.stack(v) for t, v in emb.items()}
    before = fusion.energy_share(raw, standardized=False)
    after = fusion.energy_share(raw, standardized=True)
    assert before["PRISM"] > 0.8  # the original's imbalance
    assert all(abs(s - 1 / 3) < 1e-6 for s in after.values())


def test_pca_round_trip_and_missing_teacher(tmp_path: Path) -> None:
    emb = _teachers()
    emb["CHIEF"][3] = None
    fusion = fit_fusion(emb, mode="pca", out_dim=16)
    assert fusion.out_dims == {"fused": 16} and fusion.pca_components.shape == (16, 48 + 48 + 80)
    path = fusion.save(tmp_path / "fusion.npz")
    with np.load(path, allow_pickle=False) as z:  # no pickles anywhere
        assert "pca_components" in z
    back = TeacherFusion.load(path)
    std = {
        t: back.standardize(t, np.stack([e if e is not None else fusion.mean[t] for e in v])) for t, v in emb.items()
    }
    np.testing.assert_allclose(back.fuse(std), fusion.fuse(std), rtol=1e-6)
    assert back.teachers == ["TITAN", "CHIEF", "PRISM"]


def test_pca_capped_by_training_slides() -> None:
    fusion = fit_fusion(_teachers(n=10), mode="pca", out_dim=768)
    assert fusion.out_dims == {"fused": 10}


def test_heads_mode_and_errors(tmp_path: Path) -> None:
    fusion = fit_fusion(_teachers(), mode="heads")
    assert fusion.out_dims == {"TITAN": 48, "CHIEF": 48, "PRISM": 80}
    assert TeacherFusion.load(fusion.save(tmp_path / "h.npz")).mode == "heads"
    with pytest.raises(InputError, match="at least 2 training slides"):
        fit_fusion({"TITAN": [np.ones(3), None]})
    with pytest.raises(InputError, match="fusion mode"):
        fit_fusion(_teachers(), mode="concat")


def test_training_fusion_reads_the_embeddings_by_path() -> None:
    """The pretraining fit: each training slide's file looked up in the embeddings read at setup, a
    missing file (None) a missing teacher; out_dim None means 768 (capped by the slide count)."""
    emb = _teachers(n=12)
    paths = {t: [None if (t == "PRISM" and i == 3) else Path(f"{t}/{i}.h5") for i in range(12)] for t in emb}
    read = {p: emb[t][i] for t, ps in paths.items() for i, p in enumerate(ps) if p is not None}
    fitted = fit_training_fusion(paths, read, mode="pca", out_dim=None)
    expected = fit_fusion({t: [read[p] if p else None for p in ps] for t, ps in paths.items()}, "pca", 768)
    np.testing.assert_array_equal(fitted.pca_components, expected.pca_components)
    assert fitted.out_dims == {"fused": 12} and fitted.teachers == ["TITAN", "CHIEF", "PRISM"]
