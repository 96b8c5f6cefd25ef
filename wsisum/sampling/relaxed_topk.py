"""A differentiable choice of k patches out of a bag: the learned selector's training relaxation
(`teacher_attention.train_pooling` with `select`); torch, imported by that fit only.

`straight_through_topk` returns weights that are exactly the hard k-hot mask in value (so the loss
sees the very subset a summary would keep) and carry, as gradient, that of a relaxed k-hot: the
successive-softmax relaxation of top-k (Xie & Ermon 2019, "Reparameterizable subset sampling via
continuous relaxations"). With Gumbel noise added to the logits first, the hard subset is a sample of
k patches without replacement (Gumbel-top-k), so training explores subsets near the current best;
without it (`noise=False`) the subset is always the current top-k. Written here rather than taken
from a library: torch has no relaxed top-k, and the dozen lines below are the whole method.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gumbel_like(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise of the logits' shape (drawn on the CPU when a generator is given)."""
    device = "cpu" if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, device=device).to(logits.device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))


def relaxed_topk(logits: Tensor, k: Tensor, tau: float) -> Tensor:
    """(B, N) soft k-hot, summing to k_b per row: k successive softmaxes, each step lowering the
    logits of what the previous steps took. Padded positions must hold -inf."""
    alpha = logits.float()
    khot = torch.zeros_like(alpha)
    for j in range(int(k.max())):
        step = torch.softmax(alpha / tau, dim=-1)
        khot = khot + step * (j < k)[:, None]
        alpha = alpha + torch.log1p(-step.clamp(max=1.0 - 1e-6))
    return khot


def hard_topk(logits: Tensor, k: Tensor) -> Tensor:
    """(B, N) bool: each row's k_b largest logits (ties by position)."""
    ranks = logits.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    return ranks < k[:, None]


def straight_through_topk(
    logits: Tensor,
    mask: Tensor,
    k: int,
    tau: float = 0.5,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(hard (B, N) bool, weights (B, N), soft (B, N)): min(k, real patches) of each bag's real
    patches, weights equal to the hard mask in value with the relaxed k-hot's gradient, and that
    relaxed k-hot itself."""
    k_rows = mask.sum(-1).clamp(max=int(k)).clamp(min=1)
    perturbed = logits.float() + (gumbel_like(logits, generator) if noise else 0.0)
    perturbed = perturbed.masked_fill(~mask, float("-inf"))
    hard = hard_topk(perturbed, k_rows) & mask
    soft = relaxed_topk(perturbed, k_rows, tau)
    return hard, hard.float() + soft - soft.detach(), soft
