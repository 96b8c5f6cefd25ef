"""Teacher attention: which patches the slide foundation models' view of a slide rests on, learnt
across the cohort in seconds and read off a slide in one pass over its patches.

Word relevance (`teacher_relevance`) sees morphologies whose *presence* moves the teachers (a
metastasis); it cannot see a label that lives in a subtle shift of a morphology every slide has
(a molecular subtype shifting the tumour's features): the word is on every slide. A gated-attention
pooling (Ilse et al. 2018) trained to predict each slide's fused teacher embedding from its patches
can: to predict the target it must attend to the patches whose features carry it.

Fit (`fit_attention`, per dataset, cached): on a seeded sample of each slide's patches (the codebook's
sampler), features standardised over the cohort; target: the teachers standardised and weighed the
same (`teacher_relevance.standardised_targets`), reduced to the principal components that explain
90 % of it;
attention a = softmax_p(w . (tanh(V x_p) * sigmoid(U x_p))), prediction = H (sum_p a_p x_p),
MSE, AdamW, full batch. torch is imported for the fit only. No labels are used.

Apply (`attention_scores`): numpy, one pass, O(N * D * hidden). The composition summary can tilt its
proportional composition towards the clusters that hold the attention mass (`teacher_tilt`); with
`select`, the same scorer trained for a top-k subset is the default summary's selector (`learned`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.data.cohort import file_identity
from wsisum.sampling.cohort_rarity import MIN_SLIDES, slide_samples
from wsisum.sampling.teacher_relevance import standardised_targets

log = logging.getLogger(__name__)
HIDDEN = 64
COMPONENTS = 32  # principal components of the fused teacher target that the pooling predicts
EPOCHS = 300
REDUCED = 64  # the selector's fit sees this many principal components of the standardised features: a
# slide foundation model's target has as many numbers per slide as a cohort has slides, and a scorer
# on 768-1536 raw dims fits it by chance directions (and costs D/64 times more per epoch)
BASIS_ROWS = 20_000  # patches the principal directions are computed from (seeded sample)
PARAMS = ("mean", "scale", "v", "bv", "u", "bu", "w")


def fused_target(targets: np.ndarray, components: int = COMPONENTS, explained: float = 0.9) -> np.ndarray:
    """(S, k) leading principal components of the standardised teachers, in their own scale (total
    variance 1): at most `components`, and no more than explain `explained` of the variance, so the
    pooling is asked for what the teachers agree on, not for their noise."""
    centred = targets - targets.mean(0)
    u, sing, _ = np.linalg.svd(centred, full_matrices=False)
    share = np.cumsum(sing**2) / max(float((sing**2).sum()), 1e-300)
    k = int(min(components, np.searchsorted(share, explained) + 1, np.count_nonzero(sing > 1e-8 * sing[0])))
    scores = u[:, :k] * sing[:k]
    return (scores / np.sqrt((scores**2).sum(1).mean())).astype(np.float32)


def train_pooling(
    samples: list[np.ndarray],
    target: np.ndarray,
    seed: int,
    epochs: int = EPOCHS,
    select: int | None = None,
    restarts: int = 1,
) -> dict:
    """Gated-attention pooling of each slide's sample onto its target; returns numpy parameters.
    Written out rather than torchmil's ABMIL: what is kept is the scorer alone, applied in numpy.

    `select` = k: the pooling is the mean of the k best-scored patches (straight-through relaxed
    top-k, `relaxed_topk`), so the scores are trained for the subset a summary keeps, not for a soft
    weighting of the whole slide (under which a slide mean alone may carry the target). That fit is
    not convex and lands in a poor optimum from some starts: `restarts` fits from seeds seed,
    seed+1, ... and keeps the one whose hard top-k predicts the target best. It is fitted on the
    REDUCED leading principal components of the features, folded back into the returned scorer."""
    import torch

    flat = np.concatenate(samples).astype(np.float32)
    mean, scale = torch.from_numpy(flat.mean(0)), torch.from_numpy(np.maximum(flat.std(0), 1e-6))
    size = max(len(s) for s in samples)
    x = torch.zeros(len(samples), size, flat.shape[1])  # (S, P, D), padded; `pad` masks the padding
    pad = torch.ones(len(samples), size, dtype=torch.bool)
    for i, sample in enumerate(samples):
        x[i, : len(sample)] = (torch.from_numpy(sample.astype(np.float32)) - mean) / scale
        pad[i, : len(sample)] = False
    y = torch.from_numpy(target)
    basis = None
    if select is not None and x.shape[-1] > REDUCED:  # the selector is fitted on the leading components
        rows = x[~pad]
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:BASIS_ROWS]]
        basis = principal_basis(rows, REDUCED)
        x = x @ basis
    fits = [fit_scorer(x, pad, y, seed + r, epochs, select) for r in range(max(1, int(restarts)))]
    params, loss = min(fits, key=lambda fit: fit[1])
    if basis is not None:  # folded back: the scorer reads standardised features, as the softmax fit's does
        params |= {"v": basis @ params["v"], "u": basis @ params["u"]}
    log.info("teacher scorer fitted on %d slides: loss %.3f (best of %d starts)", len(samples), loss, len(fits))
    return {k: t.detach().numpy().astype(np.float32) for k, t in ({"mean": mean, "scale": scale} | params).items()}


def principal_basis(x, components: int):
    """(D, components) leading principal directions of the rows of `x` (torch, standardised)."""
    import torch

    _, _, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    return vt[:components].T.contiguous()


def fit_scorer(x, pad, y, seed: int, epochs: int, select: int | None) -> tuple[dict, float]:
    """One fit from one seed: (the scorer's tensors, its final loss; for `select`, of the hard top-k)."""
    import torch

    from wsisum.sampling.relaxed_topk import straight_through_topk

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    d = x.shape[-1]
    v, u = torch.nn.Linear(d, HIDDEN), torch.nn.Linear(d, HIDDEN)
    w, head = torch.nn.Linear(HIDDEN, 1, bias=False), torch.nn.Linear(d, y.shape[1])
    params = [*v.parameters(), *u.parameters(), *w.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-2)

    def loss_of(noise: bool) -> torch.Tensor:
        logits = w(torch.tanh(v(x)) * torch.sigmoid(u(x))).squeeze(-1).masked_fill(pad, -torch.inf)
        if select is None:
            a = torch.softmax(logits, dim=1)
        else:
            _, weight, _ = straight_through_topk(logits, ~pad, select, noise=noise, generator=generator)
            a = weight / weight.sum(1, keepdim=True)
        return torch.nn.functional.mse_loss(head(torch.einsum("sp,spd->sd", a, x)), y)

    for _ in range(int(epochs)):
        loss = loss_of(noise=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(loss_of(noise=False))
    return {"v": v.weight.T, "bv": v.bias, "u": u.weight.T, "bu": u.bias, "w": w.weight[0]}, final


def attention_scores(features: np.ndarray, params: Mapping[str, np.ndarray], chunk: int = 16384) -> np.ndarray:
    """(N,) attention logits of every patch (numpy, chunked: one pass over a 100k-patch slide)."""
    out = np.empty(features.shape[0], dtype=np.float64)
    for s in range(0, features.shape[0], chunk):
        x = (np.asarray(features[s : s + chunk], dtype=np.float32) - params["mean"]) / params["scale"]
        gate = 1.0 / (1.0 + np.exp(-(x @ params["u"] + params["bu"])))
        out[s : s + len(x)] = (np.tanh(x @ params["v"] + params["bv"]) * gate) @ params["w"]
    return out


def fit_attention(
    bags: list[tuple[str, str | Path]],
    embeddings: Callable[[str], Mapping[str, np.ndarray]],
    cache_dir: str | Path | None,
    per_slide: int = 400,
    seed: int = 0,
    select: int | None = None,
    restarts: int = 1,
) -> dict[str, np.ndarray] | None:
    """The dataset's attention parameters (`train_pooling`), from `cache_dir` when these bags were
    fitted before; None when fewer than MIN_SLIDES slides have every teacher (no teacher view to
    learn from)."""
    fit = "" if select is None else f"|select{int(select)}x{int(restarts)}pc{REDUCED}"  # softmax: its old key
    h = hashlib.sha1(f"attention|{per_slide}|{seed}|{HIDDEN}|{COMPONENTS}|{EPOCHS}{fit}".encode())
    for sid, path in bags:
        h.update(f"|{sid}|{file_identity(path)}".encode())
    path = Path(cache_dir) / f"attention-{h.hexdigest()[:16]}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in PARAMS}
    ids, samples = slide_samples(bags, per_slide, seed, purpose="attention")
    targets, keep = standardised_targets(tuple(ids), embeddings)
    if targets.shape[1] == 0 or keep.sum() < MIN_SLIDES:
        return None  # no teachers or too few slides with all of them
    kept = [s for s, k in zip(samples, keep) if k]
    params = train_pooling(kept, fused_target(targets[keep]), seed, select=select, restarts=restarts)
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **params)
    return params
