"""Train many ABMIL models at once: one replica per (fold, seed), each on its own slides and seed.

Why: the study trains hundreds of small MIL models (tasks x bag sets x folds x seeds); a Lightning
fit each is seconds of overhead and small matmuls one model at a time. Here the bags of a task sit
in memory once (`BagStore`), the replicas' parameters are stacked (`StackedABMIL`) and every step
trains each replica on its own minibatch (own shuffling and dropout generators), followed by one
elementwise AdamW step (`StackedAdamW`).

Replicas never interact, so a replica's result is the one it would get trained alone (up to float
rounding): it has its own initialisation, data order, dropout draws, optimizer step count, early
stopping (on the task's monitor; `patience` epochs without improvement stop it and it trains no
more) and best weights, which are tested at the end. The cost of a run (wall time of its epochs)
is shared among the replicas in proportion to the patches each processed.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_auroc

from wsisum.evaluate.stacked import StackedABMIL, StackedAdamW, cosine_lr
from wsisum.lit.classifier import METRICS, slide_metrics

log = logging.getLogger(__name__)
# mean patches per replica minibatch up to which all replicas run padded in one bmm per layer (small
# bags: per-op overhead dominates); above, replica by replica. CPU, ABMIL 64/32, batch 4, 15 replicas:
# padded 18 / 29 / 91 / 836 ms per replica-epoch on 16 / 64 / 256 / ~1400-patch bags, one by one 33 / 43 / 84 / 320
PADDED_MAX_PATCHES = 512


@dataclass(frozen=True)
class ReplicaSettings:
    """How every replica trains (the `replicas:` block of configs/evaluate.yaml)."""

    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 60
    patience: int = 10
    hidden_dim: int = 256
    att_dim: int = 128
    dropout: float = 0.25
    gated: bool = True
    scheduler: str = "none"  # none | cosine (over max_epochs)
    monitor: str = "val/loss"  # val/loss or val/<metric> of METRICS
    monitor_mode: str = "min"
    eval_batch_size: int = 64  # bags per forward at validation/test (memory only)
    record_test_curve: bool = False  # also test every epoch (learning curves; never for selection)

    def __post_init__(self) -> None:
        name = self.monitor.split("/", 1)[-1]
        if not self.monitor.startswith("val/") or name not in ("loss", *METRICS):
            raise ValueError(f"monitor {self.monitor}: use val/loss or val/<{'|'.join(METRICS)}>")
        if self.monitor_mode not in ("min", "max") or self.scheduler not in ("none", "cosine"):
            raise ValueError(f"monitor_mode {self.monitor_mode} / scheduler {self.scheduler} unknown")
        if min(self.batch_size, self.max_epochs, self.patience, self.eval_batch_size) < 1:
            raise ValueError("batch_size, max_epochs, patience and eval_batch_size must be >= 1")


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its fold's slides (indices into the BagStore) and its seed."""

    fold: int
    seed: int
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    class_weights: tuple[float, ...] | None = None


class BagStore:
    """Every bag of a task in memory, once: features concatenated (P + 1, D) float32, the last row
    zero (what padding points at), with each bag's offset and length, its slide id and target."""

    def __init__(self, features: Sequence[Tensor], targets: Sequence[int], slide_ids: Sequence[str]):
        if not (len(features) == len(targets) == len(slide_ids)) or not features:
            raise ValueError("need as many targets and slide ids as bags, and at least one bag")
        self.lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        dim = features[0].shape[1]
        self.features = torch.cat([*(f.float() for f in features), torch.zeros(1, dim)])
        self.pad_row = int(self.offsets[-1])
        self.targets = torch.tensor(list(targets), dtype=torch.long)
        self.slide_ids = list(slide_ids)
        self.bag_rows = [torch.arange(int(o), int(o) + len(f)) for o, f in zip(self.offsets, features)]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.slide_ids)

    def _rows(self, bags: Sequence[int]) -> tuple[Tensor, Tensor]:
        rows = torch.cat([self.bag_rows[b] for b in bags])
        return rows, torch.repeat_interleave(torch.arange(len(bags)), self.lengths[list(bags)])

    def packed(self, bags: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(patches (P, D), bag of each patch (P,)) of `bags`, concatenated in order."""
        rows, seg = self._rows(bags)
        return self.features.index_select(0, rows), seg

    def padded(self, bag_lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, int, list[int]]:
        """Several replicas' minibatches: x (R', Pm, D), seg (R', Pm) (padding: n_bags), n_bags (the
        most bags of any), real patches per replica."""
        n_bags = max(len(b) for b in bag_lists)
        packed = [self._rows(b) for b in bag_lists]
        n_real = [len(rows) for rows, _ in packed]
        pm = max(n_real)
        rows = torch.full((len(bag_lists), pm), self.pad_row, dtype=torch.long)
        seg = torch.full((len(bag_lists), pm), n_bags, dtype=torch.long)
        for j, (r, s) in enumerate(packed):
            rows[j, : len(r)], seg[j, : len(s)] = r, s
        return self.features.index_select(0, rows.reshape(-1)).view(len(bag_lists), pm, -1), seg, n_bags, n_real


def replica_generators(fold: int, seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """(init, data order, dropout) generators of replica (fold, seed): independent streams from both."""
    states = np.random.SeedSequence([int(seed), int(fold)]).generate_state(3, dtype=np.uint64)
    return tuple(torch.Generator().manual_seed(int(s) & (2**63 - 1)) for s in states)  # type: ignore[return-value]


@dataclass
class ReplicaResult:
    """What one replica ended with: tidy metric values and its test predictions."""

    spec: ReplicaSpec
    values: dict[str, float | int | None]
    predictions: list[dict] = field(default_factory=list)


@dataclass
class _Track:
    """Early-stopping and cost bookkeeping of one replica."""

    active: bool = True
    best: float = math.nan
    best_epoch: int = -1
    wait: int = 0
    epochs: int = 0
    best_state: dict[str, Tensor] | None = None
    best_val_logits: Tensor | None = None
    epoch_times: list[float] = field(default_factory=list)
    fit_time: float = 0.0


def _better(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    return math.isnan(best) or (value < best if mode == "min" else value > best)


class ReplicaTrainer:
    """Trains the replicas `specs` on `store` (call `fit`), keeping per-epoch curves in `curves`."""

    def __init__(self, store: BagStore, specs: Sequence[ReplicaSpec], n_classes: int, settings: ReplicaSettings):
        self.store, self.specs, self.n_classes, self.s = store, list(specs), int(n_classes), settings
        gens = [replica_generators(sp.fold, sp.seed) for sp in self.specs]
        self.data_gens = [g[1] for g in gens]
        self.drop_gens = [g[2] for g in gens]
        s = settings
        self.model = StackedABMIL(
            [g[0] for g in gens], store.dim, n_classes, s.hidden_dim, s.att_dim, s.dropout, s.gated
        )
        self.opt = StackedAdamW(self.model.parameters(), len(self.specs), lr=s.lr, weight_decay=s.weight_decay)
        ones = [1.0] * n_classes
        self.class_weights = torch.tensor([list(sp.class_weights or ones) for sp in self.specs])
        self.weighted = any(sp.class_weights is not None for sp in self.specs)
        mean_len = float(store.lengths.float().mean())
        self.padded = mean_len * s.batch_size <= PADDED_MAX_PATCHES
        self.curves: list[dict] = []
        self.tracks = [_Track() for _ in self.specs]

    # --- training -----------------------------------------------------------------------------
    def _loss(self, logits: Tensor, y: Tensor, r: int) -> Tensor:
        return F.cross_entropy(logits.float(), y, weight=self.class_weights[r] if self.weighted else None)

    def _train_step(self, batches: dict[int, list[int]]) -> dict[int, tuple[float, int]]:
        """One step of every replica in `batches` (replica -> its bags); returns replica -> (loss, patches)."""
        self.opt.zero_grad()
        out: dict[int, tuple[float, int]] = {}
        reps = list(batches)
        if self.padded:
            x, seg, n_bags, n_real = self.store.padded([batches[r] for r in reps])
            logits = self.model.forward_padded(reps, x, seg, n_bags, [self.drop_gens[r] for r in reps], n_real)
            # every replica's (weighted) mean cross-entropy at once: the same value as _loss replica by replica
            real = torch.arange(n_bags)[None, :] < torch.tensor([len(batches[r]) for r in reps])[:, None]
            slot = torch.arange(len(reps))[:, None].expand_as(real)[real]
            y = torch.cat([self.store.targets[batches[r]] for r in reps])
            ce = F.cross_entropy(logits[real].float(), y, reduction="none")
            w = self.class_weights[torch.as_tensor(reps)[slot], y] if self.weighted else torch.ones_like(ce)
            losses = ce.new_zeros(len(reps)).index_add(0, slot, ce * w) / w.new_zeros(len(reps)).index_add(0, slot, w)
            losses.sum().backward()
            out = {r: (loss, n_real[j]) for j, (r, loss) in enumerate(zip(reps, losses.tolist()))}
        else:  # replica by replica, each backward at once: memory of one replica's minibatch
            for r in reps:
                bags = batches[r]
                x, seg = self.store.packed(bags)
                logits, _ = self.model.forward_one(r, x, seg, len(bags), self.drop_gens[r])
                loss = self._loss(logits, self.store.targets[bags], r)
                loss.backward()
                out[r] = (float(loss.detach()), len(x))
        self.opt.step(reps)
        return out

    @torch.no_grad()
    def predict(self, parts: dict[int, Sequence[int]]) -> dict[int, Tensor]:
        """Logits (n, C) of each replica's bags, in eval mode, `eval_batch_size` bags per forward."""
        self.model.eval()
        out: dict[int, Tensor] = {}
        step = self.s.eval_batch_size
        for r, bags in parts.items():
            chunks = []
            for i in range(0, len(bags), step):
                chunk = list(bags[i : i + step])
                x, seg = self.store.packed(chunk)
                chunks.append(self.model.forward_one(r, x, seg, len(chunk))[0].float())
            out[r] = torch.cat(chunks) if chunks else torch.zeros(0, self.n_classes)
        self.model.train()
        return out

    def _scores(self, logits: Tensor, bags: Sequence[int], r: int, full: bool = True) -> dict[str, float]:
        """Loss and AUROC (every metric with `full`) of replica r's logits of `bags`."""
        if not len(bags):
            return dict.fromkeys(("loss", *METRICS), math.nan)
        y = self.store.targets[list(bags)]
        probs = torch.softmax(logits, -1)
        if full:
            metrics = {k: float(v) for k, v in slide_metrics(probs, y, self.n_classes).items()}
        else:  # per epoch only what selection and the curves need (the rest costs as much again)
            metrics = {"auroc": self._auroc(probs, y)}
        return {"loss": float(self._loss(logits, y, r)), **metrics}

    def _auroc(self, probs: Tensor, y: Tensor) -> float:
        """slide_metrics' AUROC alone (macro one-vs-rest over the classes present; NaN below two)."""
        present = torch.bincount(y, minlength=self.n_classes) > 0
        if int(present.sum()) < 2:
            return math.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # absent classes warn; they are left out of the mean
            per_class = multiclass_auroc(probs, y, self.n_classes, average=None, thresholds=None)
        return float(per_class[present].mean())

    def _epoch_batches(self, r: int) -> list[list[int]]:
        train = self.specs[r].train
        perm = torch.randperm(len(train), generator=self.data_gens[r]).tolist()
        b = self.s.batch_size
        return [[train[i] for i in perm[k : k + b]] for k in range(0, len(perm), b)]

    def _run_epoch(self, epoch: int, active: list[int]) -> None:
        s = self.s
        if s.scheduler == "cosine":
            self.opt.lr = cosine_lr(s.lr, epoch, s.max_epochs)
        t0 = time.perf_counter()
        plans = {r: self._epoch_batches(r) for r in active}
        sums = {r: [0.0, 0, 0] for r in active}  # loss * bags, bags, patches
        for k in range(max(len(p) for p in plans.values())):
            batches = {r: plans[r][k] for r in active if k < len(plans[r])}
            for r, (loss, patches) in self._train_step(batches).items():
                n = len(batches[r])
                sums[r][0] += loss * n
                sums[r][1] += n
                sums[r][2] += patches
        train_s = time.perf_counter() - t0
        val = self.predict({r: self.specs[r].val for r in active})
        test = self.predict({r: self.specs[r].test for r in active}) if s.record_test_curve else {}
        wall = time.perf_counter() - t0
        total_patches = sum(v[2] for v in sums.values()) or 1
        for r in active:
            tr, sp = self.tracks[r], self.specs[r]
            share = sums[r][2] / total_patches
            tr.epoch_times.append(train_s * share)
            tr.fit_time += wall * share
            tr.epochs += 1
            train_loss = sums[r][0] / max(sums[r][1], 1)
            needs = s.monitor[4:]
            scores = self._scores(val[r], sp.val, r, full=needs not in ("loss", "auroc"))
            row = {"replica": r, "fold": sp.fold, "seed": sp.seed, "epoch": epoch, "train_loss": train_loss}
            row |= {"val_loss": scores["loss"], "val_auroc": scores["auroc"]}
            if s.record_test_curve:
                ts = self._scores(test[r], sp.test, r, full=False)
                row |= {"test_loss": ts["loss"], "test_auroc": ts["auroc"]}
            self.curves.append(row)
            # an empty val partition selects on the training loss (as the Lightning path does)
            value, mode = (scores[needs], s.monitor_mode) if sp.val else (train_loss, "min")
            if _better(value, tr.best, mode) or tr.best_epoch < 0:
                tr.best, tr.best_epoch, tr.wait = value, epoch, 0
                tr.best_state = self.model.replica_state(r)
                tr.best_val_logits = val[r]
            else:
                tr.wait += 1
            if tr.wait >= s.patience or epoch + 1 >= s.max_epochs:
                tr.active = False

    def fit(self) -> list[ReplicaResult]:
        """Train until every replica has stopped; test each at its best epoch."""
        for sp in self.specs:
            if not sp.train or not sp.test:
                raise ValueError(f"replica fold {sp.fold} seed {sp.seed} has no train or no test slides")
        self.model.train()
        for epoch in range(self.s.max_epochs):
            active = [r for r, tr in enumerate(self.tracks) if tr.active]
            if not active:
                break
            self._run_epoch(epoch, active)
            if epoch % 10 == 0 or not any(tr.active for tr in self.tracks):
                last = [c for c in self.curves if c["epoch"] == epoch]
                log.info(
                    "epoch %d: %d replica(s) training, mean train loss %.3f, val loss %.3f",
                    epoch,
                    len(active),
                    statistics.fmean(c["train_loss"] for c in last),
                    _nanmean([c["val_loss"] for c in last]),
                )
        return self._test()

    def _test(self) -> list[ReplicaResult]:
        for r, tr in enumerate(self.tracks):
            assert tr.best_state is not None
            self.model.load_replica_state(r, tr.best_state)
        logits = self.predict({r: sp.test for r, sp in enumerate(self.specs)})
        results = []
        for r, (sp, tr) in enumerate(zip(self.specs, self.tracks)):
            test = self._scores(logits[r], sp.test, r)
            val = self._scores(tr.best_val_logits, sp.val, r) if tr.best_val_logits is not None else {}
            lens = self.store.lengths[list(sp.train)].float()
            values: dict[str, float | int | None] = {
                **{f"test_{k}": test[k] for k in (*METRICS, "loss")},
                **{f"val_{k}": val.get(k, math.nan) for k in (*METRICS, "loss")},
                "epoch_time_s": statistics.median(tr.epoch_times),
                "fit_time_s": tr.fit_time,
                "patches_per_bag": float(lens.mean()),
                "patches_per_bag_max": float(lens.max()),
                "epochs": tr.epochs,
                "best_epoch": tr.best_epoch,
                "n_train": len(sp.train),
                "n_val": len(sp.val),
                "n_test": len(sp.test),
            }
            preds = [
                {"slide_id": self.store.slide_ids[b], "target": int(self.store.targets[b]), "probs": p}
                for b, p in zip(sp.test, torch.softmax(logits[r], -1).tolist())
            ]
            results.append(ReplicaResult(sp, values, preds))
        return results


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def fit_replicas(
    store: BagStore, specs: Sequence[ReplicaSpec], n_classes: int, settings: ReplicaSettings
) -> tuple[list[ReplicaResult], list[dict]]:
    """Train every replica; returns (one result per spec, in order; per-epoch curve rows)."""
    trainer = ReplicaTrainer(store, specs, n_classes, settings)
    results = trainer.fit()
    return results, trainer.curves
