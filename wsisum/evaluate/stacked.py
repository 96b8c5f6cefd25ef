"""R gated-attention ABMIL models whose parameters are stacked along a leading replica dim, on packed bags.

The architecture is `wsisum.models.mil.ABMIL` (patch embedding Linear-ReLU-Dropout, torchmil's gated
attention pool, linear head), parameter for parameter (`to_abmil` rebuilds replica r as an `ABMIL`),
with nn.Linear's initialisation drawn from each replica's own generator.

Bags are packed: the patches of a minibatch concatenated (P, D) with a segment id per patch (its
bag), and the attention softmax runs per segment (`segment_softmax`), so no bag is padded to the
largest. Two layouts compute the same thing:
- `forward_one`: one replica's minibatch, its weight slices, plain mm. On CPU this is about twice as
  fast as a batched bmm over replicas padded to the longest replica minibatch (bmm's CPU kernels and
  the padding; scripts/bench_eval.py), and the caller can backward replica by replica (memory of one).
- `forward_padded`: every replica's minibatch at once, padded per replica (not per bag) to the longest,
  one bmm per layer: for small bags (summaries) where per-op overhead, not arithmetic, is the cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from wsisum.models.mil import ABMIL


def segment_softmax(scores: Tensor, seg: Tensor, n_segments: int) -> Tensor:
    """Softmax of `scores` (P,) within each segment `seg` (P,) in [0, n_segments): sums to 1 per segment.

    (torch has no segment softmax: max by scatter_reduce, sums by index_add.) The per-segment max is
    detached: subtracting it changes no value and no gradient of a softmax.
    """
    top = scores.new_full((n_segments,), float("-inf"))
    top = top.scatter_reduce(0, seg, scores.detach(), reduce="amax", include_self=True)
    e = torch.exp(scores - top[seg])
    den = e.new_zeros(n_segments).index_add(0, seg, e)
    return e / den[seg]


def _uniform(shape: Sequence[int], bound: float, gen: torch.Generator) -> Tensor:
    return (torch.rand(*shape, generator=gen) * 2 - 1) * bound


class StackedABMIL(nn.Module):
    """R ABMIL models: `embed_w` (R, D, H), `att_w` (R, H, A or 2A: tanh branch then gate), `att_v` (R, A),
    `cls_w` (R, H, C) and their biases. Replica r is initialised from `generators[r]` only, so it is the
    same model whatever the other replicas are.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 256,
        att_dim: int = 128,
        dropout: float = 0.25,
        gated: bool = True,
    ):
        super().__init__()
        if not generators:
            raise ValueError("need at least one replica")
        self.n_replicas, self.in_dim, self.n_classes = len(generators), int(in_dim), int(n_classes)
        self.hidden_dim, self.att_dim, self.dropout, self.gated = int(hidden_dim), int(att_dim), float(dropout), gated
        h, a, c = self.hidden_dim, self.att_dim, self.n_classes
        a_out = 2 * a if gated else a
        parts = {"embed_w": [], "embed_b": [], "att_w": [], "att_b": [], "att_v": [], "cls_w": [], "cls_b": []}
        for g in generators:  # nn.Linear's init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
            parts["embed_w"].append(_uniform((in_dim, h), in_dim**-0.5, g))
            parts["embed_b"].append(_uniform((h,), in_dim**-0.5, g))
            parts["att_w"].append(_uniform((h, a_out), h**-0.5, g))
            parts["att_b"].append(_uniform((a_out,), h**-0.5, g))
            parts["att_v"].append(_uniform((a,), a**-0.5, g))
            parts["cls_w"].append(_uniform((h, c), h**-0.5, g))
            parts["cls_b"].append(_uniform((c,), h**-0.5, g))
        for name, tensors in parts.items():
            setattr(self, name, nn.Parameter(torch.stack(tensors)))

    # --- one replica ----------------------------------------------------------------------------
    def _keep(self, n: int, gen: torch.Generator | None) -> Tensor:
        """Dropout's scaled keep mask (n, H) from `gen` (torch.rand: half the time of bernoulli_ here)."""
        keep = torch.rand(n, self.hidden_dim, generator=gen) >= self.dropout
        return keep.float().mul_(1 / (1 - self.dropout))

    def _drop(self, h: Tensor, gen: torch.Generator | None) -> Tensor:
        if not self.training or self.dropout == 0:
            return h
        return h * self._keep(len(h), gen)

    def _score(self, h: Tensor, att_w: Tensor, att_b: Tensor, att_v: Tensor) -> Tensor:
        a = torch.addmm(att_b, h, att_w) if h.dim() == 2 else torch.baddbmm(att_b[:, None], h, att_w)
        if self.gated:
            t, g = a.chunk(2, dim=-1)
            a = torch.tanh(t) * torch.sigmoid(g)
        else:
            a = torch.tanh(a)
        return (a @ att_v[..., None]).squeeze(-1)

    def forward_one(
        self, r: int, x: Tensor, seg: Tensor, n_bags: int, gen: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Replica r on packed bags x (P, D), seg (P,): (logits (n_bags, C), attention scores (P,))."""
        h = self._drop(torch.relu(torch.addmm(self.embed_b[r], x, self.embed_w[r])), gen)
        scores = self._score(h, self.att_w[r], self.att_b[r], self.att_v[r])
        s = segment_softmax(scores, seg, n_bags)
        z = h.new_zeros(n_bags, self.hidden_dim).index_add(0, seg, h * s[:, None])
        return torch.addmm(self.cls_b[r], z, self.cls_w[r]), scores

    # --- several replicas at once -------------------------------------------------------------
    def forward_padded(
        self,
        replicas: Sequence[int],
        x: Tensor,
        seg: Tensor,
        n_bags: int,
        gens: Sequence[torch.Generator | None] | None = None,
        n_real: Sequence[int] | None = None,
    ) -> Tensor:
        """Replicas `replicas` on x (R', Pm, D): replica j's patches first, then padding; seg (R', Pm) the
        bag of each patch in [0, n_bags), padding = n_bags. Returns logits (R', n_bags, C); a replica
        with fewer bags has rows of zero-attention padding bags the caller ignores. `n_real[j]` is the
        number of real patches of replica j: its dropout mask is drawn for them only (its own generator).
        """
        idx = torch.as_tensor(list(replicas), dtype=torch.long)
        rp, pm, _ = x.shape
        h = torch.relu(torch.baddbmm(self.embed_b[idx][:, None], x, self.embed_w[idx]))
        if self.training and self.dropout > 0:  # each replica's mask from its generator, as forward_one's
            keep = h.new_zeros(h.shape)
            for j in range(rp):
                n = int(n_real[j]) if n_real is not None else pm
                keep[j, :n] = self._keep(n, None if gens is None else gens[j])
            h = h * keep
        scores = self._score(h, self.att_w[idx], self.att_b[idx], self.att_v[idx])
        flat_seg = (seg + torch.arange(rp)[:, None] * (n_bags + 1)).reshape(-1)
        s = segment_softmax(scores.reshape(-1), flat_seg, rp * (n_bags + 1))
        z = h.new_zeros(rp * (n_bags + 1), self.hidden_dim).index_add(
            0, flat_seg, h.reshape(-1, self.hidden_dim) * s[:, None]
        )
        z = z.view(rp, n_bags + 1, self.hidden_dim)[:, :n_bags]
        return torch.baddbmm(self.cls_b[idx][:, None], z, self.cls_w[idx])

    # --- weights of one replica -----------------------------------------------------------------
    def replica_state(self, r: int) -> dict[str, Tensor]:
        return {name: p.detach()[r].clone() for name, p in self.named_parameters()}

    @torch.no_grad()
    def load_replica_state(self, r: int, state: dict[str, Tensor]) -> None:
        for name, p in self.named_parameters():
            p[r] = state[name]

    def to_abmil(self, r: int) -> ABMIL:
        """Replica r as a `wsisum.models.mil.ABMIL` with the same weights (same outputs in eval mode)."""
        m = ABMIL(self.in_dim, self.n_classes, self.hidden_dim, self.att_dim, self.dropout, self.gated)
        st = self.replica_state(r)
        a = self.att_dim
        with torch.no_grad():
            m.embed[0].weight.copy_(st["embed_w"].T)
            m.embed[0].bias.copy_(st["embed_b"])
            m.pool.fc1.module.weight.copy_(st["att_w"][:, :a].T)
            m.pool.fc1.module.bias.copy_(st["att_b"][:a])
            if self.gated:
                m.pool.fc_gated.module.weight.copy_(st["att_w"][:, a:].T)
                m.pool.fc_gated.module.bias.copy_(st["att_b"][a:])
            m.pool.fc2.weight.copy_(st["att_v"][None])
            m.classifier.weight.copy_(st["cls_w"].T)
            m.classifier.bias.copy_(st["cls_b"])
        return m.eval()


class StackedAdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments, same defaults) on
    parameters stacked along dim 0, with one step count per replica and a mask of replicas that step.

    Hand-written because torch's AdamW keeps one step count per tensor: a replica that sits a step out
    (its epoch has fewer batches, or it has stopped early) would still decay and move on momentum,
    and its bias correction would count the others' steps; it would not be the model trained alone.
    Every operation is elementwise, so replicas never mix (no global grad-norm clipping either).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        n_replicas: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.steps = torch.zeros(n_replicas, dtype=torch.long)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, replicas: Sequence[int]) -> None:
        """One AdamW step of the listed replicas (the others are left exactly as they are)."""
        if not replicas:
            return
        idx = torch.as_tensor(list(replicas), dtype=torch.long)
        every = len(idx) == len(self.steps) and bool((idx == torch.arange(len(idx))).all())
        self.steps[idx] += 1
        b1, b2 = self.betas
        t = self.steps[idx].double()
        step_size = (self.lr / (1 - b1**t)).float()
        bc2_sqrt = torch.sqrt(1 - b2**t).float()
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            shape = (len(idx),) + (1,) * (p.dim() - 1)
            # all replicas step (the usual case): in place on the stacked tensors; else on copies of the rows
            g, pr, mr, vr = (p.grad, p.data, m, v) if every else (p.grad[idx], p[idx], m[idx], v[idx])
            pr.mul_(1 - self.lr * self.weight_decay)
            mr.lerp_(g, 1 - b1)
            vr.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (vr.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
            pr.addcdiv_(mr * step_size.view(shape), denom, value=-1.0)
            if not every:
                p[idx], m[idx], v[idx] = pr, mr, vr


def cosine_lr(base: float, epoch: int, max_epochs: int, floor: float = 0.01) -> float:
    """The learning rate of epoch `epoch` under cosine annealing to floor * base over max_epochs
    (torch's CosineAnnealingLR closed form, eta_min = floor * base, as MILClassifier's)."""
    lo = base * floor
    return lo + (base - lo) * (1 + math.cos(math.pi * min(epoch, max_epochs) / max(max_epochs, 1))) / 2
