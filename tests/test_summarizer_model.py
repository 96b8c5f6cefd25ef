"""The masked transformer: any D, any bag size, padding-invariant, SDPA == explicit attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsisum.models.summarizer import MaskedSummarizer, random_visible, sincos_2d

SMALL = dict(embed_dim=32, depth=2, heads=4, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def _batch(b=3, n=40, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 25:] = False
    mask[2, 3:] = False
    pos = torch.randint(0, 30, (b, n, 2), generator=g).float()
    return x, mask, pos


@pytest.mark.parametrize("pos_encoding", ["coords", "none"])
def test_shapes_and_padding_invariance(pos_encoding: str) -> None:
    torch.manual_seed(0)
    model = MaskedSummarizer(12, {"TITAN": 7, "PRISM": 9}, pos_encoding=pos_encoding, **SMALL).eval()
    x, mask, pos = _batch()
    vis = random_visible(mask, 0.75, torch.Generator().manual_seed(1))
    out = model(x, mask, pos, vis)
    assert out["slide"].shape == (3, 32) and out["reconstruction"].shape == (3, 40, 12)
    assert out["distill"]["TITAN"].shape == (3, 7) and out["distill"]["PRISM"].shape == (3, 9)
    alone = model(x[1:2, :25], mask[1:2, :25], pos[1:2, :25], vis[1:2, :25])
    torch.testing.assert_close(alone["slide"][0], out["slide"][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone["reconstruction"][0], out["reconstruction"][1, :25], atol=1e-5, rtol=1e-5)


def test_padding_content_is_ignored() -> None:
    torch.manual_seed(0)
    model = MaskedSummarizer(12, {"f": 4}, **SMALL).eval()
    x, mask, pos = _batch()
    vis = random_visible(mask, 0.5, torch.Generator().manual_seed(0))
    a = model(x, mask, pos, vis)["slide"]
    x2 = x.clone()
    x2[~mask] = 1e3  # garbage in padded rows
    torch.testing.assert_close(model(x2, mask, pos, vis)["slide"], a)


def test_sdpa_matches_explicit_attention() -> None:
    torch.manual_seed(0)
    sdpa = MaskedSummarizer(12, {"f": 4}, attention="sdpa", **SMALL).eval()
    explicit = MaskedSummarizer(12, {"f": 4}, attention="explicit", **SMALL).eval()
    explicit.load_state_dict(sdpa.state_dict())
    x, mask, pos = _batch()
    vis = random_visible(mask, 0.75, torch.Generator().manual_seed(2))
    a, b = sdpa(x, mask, pos, vis), explicit(x, mask, pos, vis)
    torch.testing.assert_close(a["slide"], b["slide"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a["reconstruction"], b["reconstruction"], atol=1e-5, rtol=1e-4)


def test_random_visible_counts() -> None:
    _, mask, _ = _batch()
    vis = random_visible(mask, 0.875, torch.Generator().manual_seed(0))
    assert vis.sum(1).tolist() == [5, 3, 1]  # round(40/8), round(25/8), max(1, round(3/8))
    assert not (vis & ~mask).any()


def test_sincos_positions_distinguish_neighbours() -> None:
    pos = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]])
    enc = sincos_2d(pos, 32)[0]
    assert enc.shape == (4, 32)
    d = torch.cdist(enc, enc)
    assert (d[np.triu_indices(4, 1)] > 0.1).all()


def test_bf16_autocast_forward_and_backward() -> None:
    """What trainer=gpu / ddp run (precision bf16-mixed): the decoder's scatter must see one dtype, and
    every parameter, the mask token included, gets a finite gradient. CPU autocast takes the same path."""
    torch.manual_seed(0)
    model = MaskedSummarizer(12, {"TITAN": 7}, **SMALL)
    x, mask, pos = _batch()
    vis = random_visible(mask, 0.75, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, mask, pos, vis)
        loss = out["reconstruction"].float().pow(2).mean() + out["distill"]["TITAN"].float().pow(2).mean()
    loss.backward()
    assert out["reconstruction"].dtype == torch.bfloat16 and torch.isfinite(loss)
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
