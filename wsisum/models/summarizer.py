"""WSISum's student: a masked-autoencoder transformer over patch-feature tokens.

Differences from the original, on purpose: any feature dim D (learned input projection), any bag
size (padding masks, no duplicated patches, no hard-wired 500), positions from the 2-D coords,
PyTorch scaled-dot-product attention, and separate heads for reconstruction and distillation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_2d(pos: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """2-D sine-cosine encoding of continuous grid positions (B, N, 2) -> (B, N, dim).

    Half the channels encode the column, half the row (as MAE's fixed 2-D table, but evaluated at
    arbitrary positions, so any slide size and any subset of patches works without a lookup table).
    """
    quarter = dim // 4
    freqs = torch.exp(-math.log(max_period) * torch.arange(quarter, device=pos.device, dtype=torch.float32) / quarter)
    parts = []
    for axis in range(2):
        angles = pos[..., axis : axis + 1].float() * freqs
        parts += [torch.sin(angles), torch.cos(angles)]
    enc = torch.cat(parts, dim=-1)
    return F.pad(enc, (0, dim - enc.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention; `impl="sdpa"` (fused kernels) or "explicit" softmax(QK^T)V for comparison."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed dim {dim} is not divisible by {heads} heads")
        self.heads, self.impl, self.dropout = heads, impl, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = None
        if key_mask is not None:  # True = real token; padded keys get -inf
            bias = torch.zeros(b, 1, 1, n, dtype=q.dtype, device=x.device)
            bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        p = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if bias is not None:
                scores = scores + bias
            out = F.dropout(scores.softmax(-1), p) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, impl: str = "sdpa"):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout, impl)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class MaskedSummarizer(nn.Module):
    """Encoder over [slide token + visible patches], decoder reconstructing masked patch features.

    forward(features (B,N,D), mask (B,N) real patches, pos (B,N,2) grid positions, visible (B,N) bool)
    returns the slide token (B,E), its distillation outputs per head, and reconstructions (B,N,D).
    """

    def __init__(
        self,
        in_dim: int,
        distill_dims: Mapping[str, int],
        embed_dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pos_encoding: str = "coords",
        attention: str = "sdpa",
    ):
        super().__init__()
        if pos_encoding not in ("coords", "none"):
            raise ValueError(f"pos_encoding must be 'coords' or 'none', got {pos_encoding!r}")
        self.in_dim, self.embed_dim, self.pos_encoding = in_dim, embed_dim, pos_encoding
        self.input_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, embed_dim))
        self.slide_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.encoder = nn.ModuleList(Block(embed_dim, heads, mlp_ratio, dropout, attention) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio, dropout, attention) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.reconstruct = nn.Linear(decoder_dim, in_dim)
        self.distill = nn.ModuleDict(
            {name: nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, d)) for name, d in distill_dims.items()}
        )
        nn.init.trunc_normal_(self.slide_token, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)
        for head in self.distill.values():  # start near 0: the first distillation loss is ~|target|^2
            nn.init.trunc_normal_(head[-1].weight, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _pos(self, pos: Tensor | None, dim: int) -> Tensor | float:
        if self.pos_encoding == "none" or pos is None:
            return 0.0
        return sincos_2d(pos, dim)

    def encode(
        self, features: Tensor, mask: Tensor, pos: Tensor | None, visible: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode visible patches; returns (slide token (B,E), encoded visible (B,V,E), their indices (B,V), valid (B,V))."""
        tokens = self.input_proj(features) + self._pos(pos, self.embed_dim)
        vis = visible & mask
        n_vis = vis.sum(1)
        v_max = max(int(n_vis.max()), 1)
        # visible tokens first, in their original order (stable sort on ~vis)
        order = torch.sort((~vis).to(torch.int8), dim=1, stable=True).indices[:, :v_max]
        x = gather_tokens(tokens, order)
        vis_valid = torch.arange(v_max, device=x.device)[None, :] < n_vis[:, None]
        x = torch.cat([self.slide_token.expand(x.shape[0], -1, -1), x], dim=1)
        key_mask = torch.cat([torch.ones_like(vis_valid[:, :1]), vis_valid], dim=1)
        for blk in self.encoder:
            x = blk(x, key_mask)
        x = self.encoder_norm(x)
        return x[:, 0], x[:, 1:], order, vis_valid

    def forward(
        self, features: Tensor, mask: Tensor, pos: Tensor | None, visible: Tensor, reconstruct: bool = True
    ) -> dict[str, Tensor | dict[str, Tensor]]:
        slide, enc, order, vis_valid = self.encode(features, mask, pos, visible)
        out: dict = {"slide": slide, "distill": {k: head(slide) for k, head in self.distill.items()}}
        if not reconstruct:
            return out
        b, n, _ = features.shape
        dec_vis = self.decoder_embed(enc)
        # the mask token in the decoder's compute dtype: under bf16 autocast `dec_vis` is bf16 and
        # scatter_ needs one dtype (the cast keeps the token's gradient)
        full = self.mask_token.to(dec_vis.dtype).expand(b, n, -1).clone()
        # scatter encoded visible tokens back to their positions (padding rows of `order` are dropped)
        scatter_idx = torch.where(vis_valid, order, torch.full_like(order, n))
        full = torch.cat([full, full[:, :1]], dim=1)
        full.scatter_(1, scatter_idx[..., None].expand(-1, -1, full.shape[-1]), dec_vis)
        full = full[:, :n] + self._pos(pos, full.shape[-1])
        x = torch.cat([self.decoder_embed(slide)[:, None], full], dim=1)
        key_mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        for blk in self.decoder:
            x = blk(x, key_mask)
        out["reconstruction"] = self.reconstruct(self.decoder_norm(x[:, 1:]))
        return out


def random_visible(
    mask: Tensor, mask_ratio: float, generator: torch.Generator | None = None, n_visible: int | None = None
) -> Tensor:
    """Per bag, keep max(1, round(n_real * (1 - mask_ratio))) random real patches visible, or exactly
    min(n_visible, n_real) of them when `n_visible` is given (budget-aware pretraining)."""
    b, n = mask.shape
    noise = torch.rand(b, n, generator=generator, device=mask.device if generator is None else "cpu").to(mask.device)
    noise = noise.masked_fill(~mask, 2.0)
    if n_visible is None:
        n_keep = torch.clamp(torch.round(mask.sum(1) * (1.0 - mask_ratio)), min=1).long()
    else:
        n_keep = torch.clamp(mask.sum(1), max=int(n_visible)).clamp(min=1).long()
    ranks = noise.argsort(1).argsort(1)
    return (ranks < n_keep[:, None]) & mask
