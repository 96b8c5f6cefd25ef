"""Teacher relevance of visual words: which morphologies the slide foundation models react to.

Isolation finds what a proportional draw rounds away, but real slides hold isolated patches that say
nothing (pen, folds, blur, bubbles, tissue edges), and cohort rarity cannot set them apart: an
artifact kind is on as many slides as a metastasis is. What does set them apart is what the slide
foundation models (the teachers) see: their embeddings move with a tumour and ignore a pen mark.
So, over the cohort, for every visual word w of the codebook (`cohort_rarity`):

    relevance_w = n1 n0 / S * || mean(T | w present) - mean(T | w absent) ||^2 / n_teachers

where T is each teacher's embedding standardised per dimension and divided by sqrt(its dim), so
every teacher weighs the same whatever its width or scale (PRISM's norm is 5x CHIEF's). Under no
association its expectation is 1 whatever the correlation between dimensions (each term is a
chi-square with one degree of freedom on average); a word the teachers react to scores far above.
The quota weight of a patch is then its isolation times (floor + sqrt(max(relevance - 1, 0))).
No labels are used: only the slide embeddings the method distils from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from wsisum.sampling.cohort_rarity import MIN_SLIDES, Codebook

log = logging.getLogger(__name__)

Embeddings = Callable[[str], Mapping[str, np.ndarray]]  # slide_id -> {teacher: (D_t,)}, missing ones left out


def standardised_targets(slide_ids: tuple[str, ...], embeddings: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(S, sum D_t) teachers standardised per dim and scaled to unit total variance per teacher, and
    the (S,) mask of slides that have every teacher found in the cohort (the others are left out)."""
    per_slide = [embeddings(sid) for sid in slide_ids]
    names = sorted({t for e in per_slide for t in e})
    keep = np.array([all(t in e for t in names) for e in per_slide]) if names else np.zeros(len(slide_ids), bool)
    if not names or keep.sum() < MIN_SLIDES:
        return np.zeros((len(slide_ids), 0)), keep
    blocks = []
    for t in names:
        x = np.stack([np.asarray(e[t], dtype=np.float64) for e, k in zip(per_slide, keep) if k])
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
        blocks.append(x / np.sqrt(x.shape[1]))
    out = np.zeros((len(slide_ids), sum(b.shape[1] for b in blocks)))
    out[keep] = np.concatenate(blocks, axis=1)
    return out / np.sqrt(len(names)), keep


def word_relevance(presence: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(E, W) relevance of every word of every codebook from (E, S, W) presence and (S, D) targets
    (already restricted to the same S slides)."""
    s = presence.shape[1]
    p = presence.astype(np.float64)
    n1 = p.sum(1)  # (E, W)
    n0 = s - n1
    total = targets.sum(0)  # (D,)
    sum1 = np.einsum("esw,sd->ewd", p, targets)
    mean1 = sum1 / np.maximum(n1, 1)[..., None]
    mean0 = (total[None, None] - sum1) / np.maximum(n0, 1)[..., None]
    stat = (n1 * n0 / s) * ((mean1 - mean0) ** 2).sum(-1)
    return np.where((n1 > 0) & (n0 > 0), stat, 0.0)


def fit_relevance(book: Codebook, embeddings: Embeddings) -> np.ndarray | None:
    """(E, W) quota weights per word, sqrt(max(relevance - 1, 0)); None when the codebook kept no
    per-slide presence or too few slides have teachers (the caller then falls back to cohort idf)."""
    if book.presence is None or not book.slide_ids:
        return None
    targets, keep = standardised_targets(book.slide_ids, embeddings)
    if targets.shape[1] == 0:
        return None
    relevance = word_relevance(book.presence[:, keep], targets[keep])
    log.info("teacher relevance of %d words from %d slides: max %.1f", relevance.size, int(keep.sum()), relevance.max())
    return np.sqrt(np.maximum(relevance - 1.0, 0.0))
