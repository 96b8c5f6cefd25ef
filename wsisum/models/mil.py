"""Multiple-instance-learning (MIL) heads for slide classification from bags of patch features.

Every model takes a padded batch `x` (B, N, D) and `mask` (B, N) (True = real patch, as
`collate_bags` makes it) and returns a `MILOutput`: class logits (B, C), the slide embedding, and
per-patch attention scores where the model has them (ABMIL, CLAM-SB), which the `attention`
sampler and heatmaps use. Nothing is ever truncated: every model runs on any bag size.

What comes from torchmil and what is hand-written, and why:
- The gated attention pooling of ABMIL and CLAM-SB is torchmil's `AttentionPool` (Ilse et al.,
  masked softmax), and TransMIL's position encoding is torchmil's `PPEG`.
- torchmil's *models* (`ABMIL`, `TransMIL`, `CLAM_SB`) end in one logit trained with BCE: they are
  binary-only, while our tasks have up to 7 classes (BRACS), so the heads here are multi-class.
- torchmil's `TransMIL.forward` takes no mask (a padded batch would attend to padding) and pads the
  token square by duplicating real patches; its `NystromAttention` materialises three
  (heads, N, landmarks) matrices per layer (~6 GB at 100k patches, 8 heads, 256 landmarks) which
  must also be kept for backward. `NystromAttention` below computes the same Nyström approximation
  with two calls of `scaled_dot_product_attention`, whose fused (flash / memory-efficient) kernels
  never store those matrices, on CPU as on GPU: memory grows as N x dim, not N x landmarks x heads.
- torchmil's `CLAM_SB` instance loss handles two classes; CLAM's multi-class rule (in-class
  clustering for the true class, out-of-class for the others when subtyping) is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmil.models.transmil import PPEG
from torchmil.nn import AttentionPool


@dataclass
class MILOutput:
    """What a MIL model returns for a batch of B bags of (padded) size N and C classes."""

    logits: Tensor  # (B, C) class logits
    embedding: Tensor  # (B, H) slide embedding fed to the classifier
    attention: Tensor | None = None  # (B, N) unnormalised per-patch scores, -inf at padding
    aux_loss: Tensor | None = None  # model-specific extra loss (CLAM instance loss), given targets

    def attention_weights(self) -> Tensor | None:
        """Attention normalised over each bag's real patches (sums to 1; 0 at padding)."""
        return None if self.attention is None else torch.softmax(self.attention, dim=-1)


def _full_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match bags {tuple(x.shape[:2])}")
    return mask.to(device=x.device, dtype=torch.bool)


class MILModel(nn.Module):
    """Base class: `forward(x (B,N,D), mask (B,N) | None, target (B,) | None) -> MILOutput`.

    `aux_weight` is the share of `MILOutput.aux_loss` in the training loss:
    loss = (1 - aux_weight) * cross_entropy + aux_weight * aux_loss (0 for most models).
    """

    aux_weight: float = 0.0
    has_attention: bool = False  # True where `MILOutput.attention` scores every patch (ABMIL, CLAM-SB)

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ValueError(f"need in_dim >= 1 and n_classes >= 2, got {in_dim}, {n_classes}")
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.init_args: dict[str, object] = {"in_dim": self.in_dim, "n_classes": self.n_classes}

    def _remember(self, **kwargs: object) -> None:
        """Record constructor arguments, so a checkpoint can rebuild the model (`init_args`)."""
        self.init_args.update(kwargs)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"{type(self).__name__} expects (B, N, {self.in_dim}) features, got {tuple(x.shape)}")

    def forward(self, x: Tensor, mask: Tensor | None = None, target: Tensor | None = None) -> MILOutput:
        raise NotImplementedError


class MeanPool(MILModel):
    """Mean of the real patches' features, then a linear probe (the simplest honest baseline)."""

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0):
        super().__init__(in_dim, n_classes)
        self._remember(dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_dim, n_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None, target: Tensor | None = None) -> MILOutput:
        self._check(x)
        m = _full_mask(x, mask).unsqueeze(-1).to(x.dtype)
        z = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return MILOutput(self.classifier(self.dropout(z)), z)


class ABMIL(MILModel):
    """Gated attention MIL (Ilse et al. 2018): patch embedding, gated attention pooling, linear head.

    `attention` in the output holds the pre-softmax score of every patch (-inf at padding).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        att_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
    ):
        super().__init__(in_dim, n_classes)
        self._remember(hidden_dim=hidden_dim, att_dim=att_dim, dropout=dropout, gated=gated)
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.pool = AttentionPool(in_dim=hidden_dim, att_dim=att_dim, act="tanh", gated=gated)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    has_attention = True

    def _attend(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._check(x)
        m = _full_mask(x, mask)
        h = self.embed(x)  # (B, N, H)
        z, scores = self.pool(h, m, return_att=True)  # (B, H), (B, N)
        return h, z, scores.masked_fill(~m, float("-inf")), m

    def forward(self, x: Tensor, mask: Tensor | None = None, target: Tensor | None = None) -> MILOutput:
        _, z, scores, _ = self._attend(x, mask)
        return MILOutput(self.classifier(z), z, scores)


class CLAMSB(ABMIL):
    """CLAM single-branch (Lu et al. 2021): gated attention MIL + instance-level clustering loss.

    For each training bag, the `k_sample` most- and least-attended patches train one binary
    instance classifier per class: the true class's classifier learns top = positive, bottom =
    negative; with `subtyping`, every other class's classifier learns its top patches as negative.
    The loss is (1 - inst_weight) * bag CE + inst_weight * instance CE (CLAM's bag_weight 0.7).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        att_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
        k_sample: int = 8,
        inst_weight: float = 0.3,
        subtyping: bool = True,
    ):
        super().__init__(in_dim, n_classes, hidden_dim, att_dim, dropout, gated)
        self._remember(k_sample=k_sample, inst_weight=inst_weight, subtyping=subtyping)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_classes))
        self.k_sample, self.subtyping = int(k_sample), bool(subtyping)
        self.aux_weight = float(inst_weight)

    def _instance_loss(self, h: Tensor, scores: Tensor, m: Tensor, target: Tensor) -> Tensor:
        losses = []
        for b in range(h.shape[0]):
            valid = m[b].nonzero().squeeze(-1)
            hb, sb = h[b, valid], scores[b, valid]
            k = min(self.k_sample, hb.shape[0])
            top, bottom = hb[sb.topk(k).indices], hb[(-sb).topk(k).indices]
            y = int(target[b])
            total = h.new_zeros(())
            for c, clf in enumerate(self.instance_classifiers):
                if c == y:
                    logits = clf(torch.cat([top, bottom]))
                    labels = torch.cat([h.new_ones(k), h.new_zeros(k)]).long()
                elif self.subtyping:
                    logits, labels = clf(top), h.new_zeros(k).long()
                else:
                    continue
                total = total + F.cross_entropy(logits, labels)
            losses.append(total / (self.n_classes if self.subtyping else 1))
        return torch.stack(losses).mean()

    def forward(self, x: Tensor, mask: Tensor | None = None, target: Tensor | None = None) -> MILOutput:
        h, z, scores, m = self._attend(x, mask)
        aux = self._instance_loss(h, scores, m, target) if target is not None else None
        return MILOutput(self.classifier(z), z, scores, aux)


def _pinv(a: Tensor, iters: int) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of a batch of matrices (Razavi et al., Nyströmformer)."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    scale = a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1)  # per matrix
    z = a.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention (Xiong et al. 2021) with a padding mask, O(N) memory.

    softmax(QK^T) V ~= softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V with landmarks Q~, K~
    the means of `n_landmarks` contiguous segments of real tokens. The two N-sized products are
    `scaled_dot_product_attention` calls, so no (N x landmarks) matrix is ever stored.
    """

    def __init__(self, dim: int, n_heads: int = 8, n_landmarks: int = 256, pinv_iters: int = 6, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads, self.n_landmarks, self.pinv_iters = n_heads, n_landmarks, pinv_iters
        self.scale = (dim // n_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, dim = x.shape
        m = self.n_landmarks
        pad = (-n) % m  # segments of equal length: pad at the front, masked out
        if pad:
            x = F.pad(x, (0, 0, pad, 0))
            mask = F.pad(mask, (pad, 0), value=False)
        q, k, v = self.qkv(x).view(b, n + pad, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, d)
        keep = mask[:, None, :, None].to(q.dtype)
        q, k, v = q * keep, k * keep, v * keep
        seg = (n + pad) // m
        counts = mask.view(b, m, seg).sum(-1)  # (B, m) real tokens per segment
        lm_valid = counts > 0
        denom = counts.clamp_min(1)[:, None, :, None].to(q.dtype)
        q_lm = q.view(b, self.n_heads, m, seg, -1).sum(3) / denom
        k_lm = k.view(b, self.n_heads, m, seg, -1).sum(3) / denom
        # landmark kernel and its pseudo-inverse in float32 (the iteration is unstable in half precision);
        # empty landmarks get an identity row/column, so they drop out of the product exactly
        with torch.autocast(device_type=x.device.type, enabled=False):
            sim = (q_lm.float() @ k_lm.float().transpose(-1, -2)) * self.scale
            sim = sim.masked_fill(~lm_valid[:, None, None, :], float("-inf"))
            kernel = torch.softmax(sim, dim=-1)
            eye = torch.eye(m, device=x.device, dtype=kernel.dtype)
            kernel = torch.where(lm_valid[:, None, :, None], kernel, eye)
            kernel_inv = _pinv(kernel, self.pinv_iters)
        # softmax(Q~ K^T) V over real tokens, then pinv, then softmax(Q K~^T) (.) over real landmarks
        lm_v = F.scaled_dot_product_attention(q_lm, k, v, attn_mask=mask[:, None, None, :], scale=self.scale)
        lm_v = (kernel_inv @ lm_v.float()).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k_lm, lm_v, attn_mask=lm_valid[:, None, None, :], scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n + pad, dim)[:, pad:]
        return self.out(out)


class _TransLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_landmarks: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, n_heads, n_landmarks, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return x + self.attn(self.norm(x), mask)


class TransMIL(MILModel):
    """TransMIL (Shao et al. 2021): Nyström transformer over the bag with a PPEG position encoding.

    The bag is laid out on a ceil(sqrt(N))^2 token square (padding is masked, never filled with
    copies of real patches), a class token is prepended, and two Nyström layers with PPEG between
    them produce the class token the head reads. `n_landmarks=None` uses dim // 2 (the paper's).
    With `checkpointing`, each layer is recomputed in backward (less memory, ~30 % more time).
    Training memory is linear in N, no cap: one step on a 100k-patch, 768-d bag adds ~4.2 GB on CPU
    (~42 KB per patch, 14.5x the float32 bag), ~3.0 GB with `checkpointing` (scripts/bench_scale.py).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        dim: int = 512,
        n_heads: int = 8,
        n_landmarks: int | None = None,
        n_layers: int = 2,
        dropout: float = 0.1,
        checkpointing: bool = False,
    ):
        super().__init__(in_dim, n_classes)
        if n_layers < 2:
            raise ValueError("TransMIL needs at least 2 layers (PPEG sits after the first)")
        self._remember(
            dim=dim,
            n_heads=n_heads,
            n_landmarks=n_landmarks,
            n_layers=n_layers,
            dropout=dropout,
            checkpointing=checkpointing,
        )
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.ModuleList(
            _TransLayer(dim, n_heads, n_landmarks or dim // 2, dropout) for _ in range(n_layers)
        )
        self.ppeg = PPEG(dim)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)
        self.checkpointing = checkpointing

    def _layer(self, i: int, h: Tensor, mask: Tensor) -> Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self.layers[i], h, mask, use_reentrant=False)
        return self.layers[i](h, mask)

    @staticmethod
    def _to_canvas(h: Tensor, m: Tensor) -> tuple[Tensor, Tensor, int]:
        """Lay each bag's real tokens row by row on its own ceil(sqrt(n))-wide square, top-left of a
        shared S x S canvas (zeros elsewhere), so PPEG sees every bag exactly as if it were alone."""
        b, _, dim = h.shape
        n_real = m.sum(1)
        sides = torch.ceil(torch.sqrt(n_real.clamp_min(1).double())).long()
        side = int(sides.max())
        rank = m.long().cumsum(1) - 1  # position of each real token among its bag's real tokens
        pos = (rank // sides[:, None]) * side + rank % sides[:, None]
        bi, ti = m.nonzero(as_tuple=True)
        canvas = h.new_zeros(b, side * side, dim)
        canvas[bi, pos[bi, ti]] = h[bi, ti]
        cmask = torch.zeros(b, side * side, dtype=torch.bool, device=h.device)
        cmask[bi, pos[bi, ti]] = True
        return canvas, cmask, side

    def forward(self, x: Tensor, mask: Tensor | None = None, target: Tensor | None = None) -> MILOutput:
        self._check(x)
        m = _full_mask(x, mask)
        b = x.shape[0]
        if m.all():  # the common case (one bag per batch): the canvas is the sequence, zero-padded
            side = math.ceil(math.sqrt(x.shape[1]))
            pad = side * side - x.shape[1]
            h, m = F.pad(self.fc(x), (0, 0, 0, pad)), F.pad(m, (0, pad), value=False)
        else:
            h, m, side = self._to_canvas(self.fc(x), m)
        h = torch.cat([self.cls_token.expand(b, -1, -1).to(h.dtype), h], dim=1)
        m = torch.cat([m.new_ones(b, 1), m], dim=1)
        h = self._layer(0, h, m)
        h = self.ppeg(h * m.unsqueeze(-1), side, side)
        for i in range(1, len(self.layers)):
            h = self._layer(i, h, m)
        z = self.norm(h[:, 0])
        return MILOutput(self.classifier(z), z)


MIL_MODELS: dict[str, type[MILModel]] = {"abmil": ABMIL, "clam_sb": CLAMSB, "meanpool": MeanPool, "transmil": TransMIL}


def build_mil(name: str, in_dim: int, n_classes: int, **kwargs: object) -> MILModel:
    """A MIL model by registry name (abmil, clam_sb, meanpool, transmil)."""
    try:
        cls = MIL_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown MIL model '{name}' (known: {sorted(MIL_MODELS)})") from None
    return cls(in_dim, n_classes, **kwargs)
