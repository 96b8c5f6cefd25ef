"""Linear probe of summaries: mean-pooled features -> multinomial logistic regression, per CLAM fold.

A cheap, training-free-for-the-user check of how much slide-level signal the kept patches carry: no
MIL model, seconds for a whole study. The regression is written here (scipy L-BFGS on the exact
softmax loss and its gradient, ~20 lines) because scikit-learn is not a runtime dependency of wsisum.
Rows are tidy (`task, sampler, budget, mil, fold, seed, metric, value`), so the paired statistics of
`wsisum.evaluate.paired` compare samplers on the same folds exactly as they do MIL metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import softmax
from scipy.stats import rankdata

from wsisum.data.labels import read_labels
from wsisum.data.layouts import LABELS_DIR, SPLITS_DIR
from wsisum.data.splits import read_split, split_files
from wsisum.errors import InputError
from wsisum.evaluate.results import FULL

log = logging.getLogger(__name__)

PROBE = "linear_probe"  # the `mil` column of probe rows
METRIC = "probe_auroc"
PROBE_COLUMNS = ("task", "sampler", "budget", "mil", "fold", "seed", "metric", "value")
L2 = 1.0  # penalty on standardised features, as scikit-learn's default C=1


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread while fitting: L-BFGS on a few hundred parameters makes thousands of
    tiny BLAS calls, and waking BLAS threads for each is 10-20x slower on a busy machine (measured
    on 2 shared cores: 15 ms versus 260-400 ms per demo-sized fit). threadpoolctl is optional (it
    comes with scikit-learn); without it the fits are only slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


@dataclass(frozen=True)
class LinearModel:
    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,) standardisation fitted on the training rows
    scale: np.ndarray  # (D,)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return softmax(z @ self.weight + self.bias, axis=1)


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = L2, max_iter: int = 500) -> LinearModel:
    """Multinomial logistic regression: sum of cross-entropies + l2/2 ||W||^2 (bias unpenalised)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    d = z.shape[1]
    onehot = np.eye(n_classes)[y]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * n_classes].reshape(d, n_classes), theta[d * n_classes :]
        logits = z @ w + b
        # log-sum-exp by hand: scipy.special.logsumexp's array-API dispatch costs 10x this arithmetic
        shifted = logits - logits.max(1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(1)
        loss = float((np.log(total) - (shifted * onehot).sum(1)).sum() + 0.5 * l2 * (w**2).sum())
        g = e / total[:, None] - onehot  # d loss / d logits
        return loss, np.concatenate([(z.T @ g + l2 * w).ravel(), g.sum(0)])

    theta0 = np.zeros(d * n_classes + n_classes)
    with one_blas_thread():
        res = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    w, b = res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes :]
    return LinearModel(w, b, mean, scale)


def macro_auroc(proba: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """One-vs-rest AUROC averaged over the classes present in `y`, as the MIL evaluation's test AUROC
    (torchmetrics, which a report need not import); NaN under 2 classes. A class's AUROC is its
    Mann-Whitney U from the ranks of its scores (ties share a mean rank: they count half)."""
    y = np.asarray(y, dtype=np.int64)
    aucs = []
    for c in range(n_classes):
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos and n_neg:
            ranks = rankdata(proba[:, c])
            aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if len(aucs) >= 2 else math.nan


def probe_auroc(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n_classes: int, l2: float = L2
) -> float:
    """Fit on the training rows, macro AUROC on the test rows; NaN when either side has < 2 classes."""
    if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
        return math.nan
    model = fit_logreg(x_train, y_train, n_classes, l2)
    return macro_auroc(model.predict_proba(x_test), np.asarray(y_test, dtype=np.int64), n_classes)


def probe_tasks(cohort_root: Path) -> dict[str, tuple[Path, Path]]:
    """Task -> (labels CSV, splits dir) for every `labels/<task>.csv` that has `splits/<task>/`."""
    labels_dir = cohort_root / LABELS_DIR
    if not labels_dir.is_dir():
        return {}
    return {
        p.stem: (p, cohort_root / SPLITS_DIR / p.stem)
        for p in sorted(labels_dir.glob("*.csv"))
        if (cohort_root / SPLITS_DIR / p.stem).is_dir()
    }


def probe_rows(
    means: Mapping[tuple[str, int | None], Mapping[str, np.ndarray]],
    cohort_root: Path,
    l2: float = L2,
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """Probe AUROC per task, bag set and fold. `means` maps (sampler, budget) -> slide -> mean-pooled
    feature; full bags are (`full`, None). Each fold uses the slides of its train/test parts that the
    set has (val is not needed: nothing is tuned). A task whose labels or splits are bad is left out,
    with a line in `notes`."""
    tasks = probe_tasks(cohort_root)
    rows = [r for task, paths in tasks.items() for r in _task_rows(task, *paths, means, l2, notes)]
    df = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    df["budget"] = df["budget"].astype("Int64")
    return df


def _task_rows(
    task: str,
    labels_path: Path,
    splits_dir: Path,
    means: Mapping[tuple[str, int | None], Mapping[str, np.ndarray]],
    l2: float,
    notes: list[str] | None,
) -> list[dict]:
    """The rows of one task (none, with a line in `notes`, when its labels or splits are bad)."""
    try:
        labels = read_labels(labels_path)
        splits = [read_split(p, case_of=labels.case_of) for p in split_files(splits_dir).values()]
    except InputError as err:
        if notes is not None:
            notes.append(f"linear probe of task {task} left out: {err}")
        return []
    n_classes, rows = len(labels.classes), []
    for (sampler, budget), by_slide in means.items():
        if not any(s in labels.label_of for s in by_slide):
            continue  # this bag set has none of the task's slides
        for split in splits:
            tr = [s for s in split.train if s in by_slide and s in labels.label_of]
            te = [s for s in split.test if s in by_slide and s in labels.label_of]
            if not tr or not te:
                continue
            auc = probe_auroc(
                np.stack([by_slide[s] for s in tr]),
                np.array([labels.label_of[s] for s in tr]),
                np.stack([by_slide[s] for s in te]),
                np.array([labels.label_of[s] for s in te]),
                n_classes,
                l2,
            )
            budget = None if sampler == FULL else budget
            rows.append(dict(zip(PROBE_COLUMNS, (task, sampler, budget, PROBE, int(split.fold), 0, METRIC, auc))))
    return rows
