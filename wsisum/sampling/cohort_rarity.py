"""Cohort rarity: which patches look like something most slides of the cohort do not have.

Per-slide isolation (`rare.outlier_scores`) cannot tell a 3-patch metastasis from the sparse tail
of blood or fat on the same slide: both have few close neighbours. What sets the lesion apart is
that most slides of the cohort have nothing like it, while every slide has some blood. So the
cohort's patches are quantised into a visual-word codebook (k-means on a seeded subsample of every
slide) and each word gets its inverse document frequency, idf = log(slides / slides containing the
word), as in bag-of-visual-words retrieval. A patch's cohort rarity is the idf of its word; the
rare quota weights per-slide isolation by it (`rare.rarity_weights`).

No labels are used: the codebook is fitted on the very slides being summarised (transductive, as
k-means of one slide is), one codebook per dataset, and cached by the bags' identity so that every
sampler and budget of a study reuses it. On the demo cohort's CAMELYON-like slides the first 8
quota patches hold a lesion patch in 97 % of lesion-positive slides (90 % of ITC slides), against
68 % (65 %) for per-slide isolation alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.data.bags import read_bag
from wsisum.data.cohort import file_identity
from wsisum.errors import InputError
from wsisum.sampling.kmeans import kmeans
from wsisum.seeding import rng_for

log = logging.getLogger(__name__)
MIN_SLIDES = 8  # below this a document frequency says nothing: every patch gets idf 1 (no prior)
N_BOOKS = 5  # codebooks averaged (seeds)
WORDS_CHUNK = 8192  # patches per matmul when assigning words (bounded memory on 100k-patch slides)
MAX_POINTS = 400_000  # cohort sample cap: 800 MB at D = 1024 in float16


@dataclass
class Codebook:
    """Visual words of one dataset, as an ensemble of k-means codebooks (different seeds), and the
    number of its slides containing each word. One codebook's words depend on its start (whether a
    rare morphology gets words of its own); averaging idf over a few makes the prior stable (on the
    demo cohort the ITC hit rate of the first 4 quota patches ranged 0.60-0.90 over single seeds)."""

    centroids: np.ndarray  # (E, W, D) float32
    doc_freq: np.ndarray  # (E, W) slides with at least one sampled patch of the word
    n_slides: int
    presence: np.ndarray | None = None  # (E, S, W) bool: which words each fitted slide holds
    slide_ids: tuple[str, ...] = ()  # the S fitted slides, in `presence` order

    def words(self, features: np.ndarray, book: int) -> np.ndarray:
        """(N,) nearest word of every patch in codebook `book`. A chunked matmul, not a faiss index: for
        a few hundred centroids faiss' per-call setup and threads cost more than the search itself."""
        c = self.centroids[book].astype(np.float32)
        half_sq = 0.5 * np.einsum("ij,ij->i", c, c)
        out = np.empty(features.shape[0], dtype=np.int64)
        for start in range(0, features.shape[0], WORDS_CHUNK):
            x = np.asarray(features[start : start + WORDS_CHUNK], dtype=np.float32)
            out[start : start + len(x)] = np.argmin(half_sq[None, :] - x @ c.T, axis=1)  # argmin of |x - c|^2
        return out

    def patch_values(self, features: np.ndarray, per_word: np.ndarray) -> np.ndarray:
        """(N,) mean over the codebooks of `per_word` (E, W) at every patch's word."""
        if features.shape[1] != self.centroids.shape[2]:
            raise InputError(None, f"feature dim {features.shape[1]} differs from the cohort codebook's")
        return np.mean([per_word[b][self.words(features, b)] for b in range(len(self.centroids))], axis=0)

    def word_idf(self) -> np.ndarray | None:
        """(E, W) idf of every word, log(slides / slides holding it); None when the cohort is too
        small to tell (fewer than MIN_SLIDES slides)."""
        if self.n_slides < MIN_SLIDES:
            return None
        return np.log(self.n_slides / np.maximum(self.doc_freq, 1.0))

    def patch_idf(self, features: np.ndarray) -> np.ndarray:
        """(N,) mean over the codebooks of the idf of every patch's word; all ones when the cohort is
        too small to tell (no prior then)."""
        idf = self.word_idf()
        return np.ones(features.shape[0]) if idf is None else self.patch_values(features, idf)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            presence = np.zeros((0, 0, 0), bool) if self.presence is None else self.presence
            ids = np.array(self.slide_ids, dtype=str)
            np.savez(
                f,
                centroids=self.centroids,
                doc_freq=self.doc_freq,
                n_slides=np.int64(self.n_slides),
                presence=presence,
                slide_ids=ids,
            )

    @classmethod
    def load(cls, path: Path) -> Codebook:
        with np.load(path, allow_pickle=False) as z:
            presence = z["presence"] if "presence" in z and z["presence"].size else None
            ids = tuple(str(i) for i in z["slide_ids"]) if "slide_ids" in z else ()
            return cls(z["centroids"], z["doc_freq"], int(z["n_slides"]), presence, ids)


def slide_samples(
    bags: Iterable[tuple[str, str | Path]], per_slide: int, seed: int, purpose: str = "codebook"
) -> tuple[list[str], list[np.ndarray]]:
    """(slide ids, a seeded sample of up to `per_slide` patches of each, float16) of the readable bags.
    The sample per slide shrinks so that the cohort's sample stays under MAX_POINTS (memory)."""
    bags = list(bags)
    per_slide = max(1, min(int(per_slide), MAX_POINTS // max(len(bags), 1)))
    samples, ids = [], []
    for slide_id, path in bags:
        try:
            x = read_bag(path, check_values=True, metadata=False).features
        except InputError:
            continue
        take = np.sort(rng_for(seed, slide_id, purpose).permutation(x.shape[0])[:per_slide])
        samples.append(np.asarray(x[take], dtype=np.float16))
        ids.append(slide_id)
    return ids, samples


def fit_codebook(
    bags: Iterable[tuple[str, str | Path]],
    n_words: int = 128,
    per_slide: int = 400,
    seed: int = 0,
    n_books: int = N_BOOKS,
) -> Codebook:
    """Codebooks of the slides (slide_id, bag path). Bags that cannot be read are left out here (the
    summarize stage reports them as that slide's failure). The sample per slide shrinks so that the
    cohort's sample stays under MAX_POINTS (memory), whatever the number of slides."""
    ids, samples = slide_samples(bags, per_slide, seed)
    dims = {s.shape[1] for s in samples}
    if not samples or len(dims) > 1:  # mixed D: no shared codebook, per-slide isolation only
        d = max(dims, default=1)
        return Codebook(np.zeros((1, 1, d), np.float32), np.ones((1, 1)), 0)
    pooled = np.concatenate(samples).astype(np.float32)
    centroids = np.stack(
        [kmeans(pooled, n_words, seed=seed, slide_id=f"cohort-codebook-{b}").centroids for b in range(int(n_books))]
    )
    presence = np.zeros((len(centroids), len(samples), centroids.shape[1]), dtype=bool)
    book = Codebook(centroids, np.zeros(centroids.shape[:2]), len(samples), presence, tuple(ids))
    for b in range(len(centroids)):  # a word counts for a slide when any of its sampled patches hits it
        for i, s in enumerate(samples):
            presence[b, i, np.unique(book.words(s, b))] = True
    book.doc_freq = presence.sum(1).astype(np.float64)
    return book


def bags_digest(bags: Iterable[tuple[str, str | Path]], n_words: int, per_slide: int, seed: int) -> str:
    """A key that changes when any bag file (size, mtime), the slide set or a setting changes."""
    h = hashlib.sha1(f"{n_words}|{per_slide}|{seed}".encode())
    for slide_id, path in bags:
        size, mtime = file_identity(path)
        h.update(f"|{slide_id}|{size}|{mtime}".encode())
    return h.hexdigest()[:16]


def cohort_codebook(
    name: str,
    bags: list[tuple[str, str | Path]],
    cache_dir: str | Path | None,
    n_words: int = 128,
    per_slide: int = 400,
    seed: int = 0,
) -> Codebook:
    """The codebook of one dataset, from `cache_dir` when these very bags were seen before."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"codebook-v2-{name}-{bags_digest(bags, n_words, per_slide, seed)}.npz"
        if path.is_file():
            try:
                return Codebook.load(path)
            except (OSError, ValueError, KeyError):
                log.warning("%s: unreadable codebook cache entry, refitting", path)
    book = fit_codebook(bags, n_words, per_slide, seed)
    log.info("cohort codebook of %s: %d x %d words from %d slides", name, *book.centroids.shape[:2], book.n_slides)
    if path is not None:
        book.save(path)
    return book
