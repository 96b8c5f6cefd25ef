"""The replica engine: stacked ABMILs that train as if alone, packed bags, and `wsisum-evaluate engine=replicas`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.apps import run_app
from wsisum.evaluate import replicas as rep
from wsisum.evaluate.replicas import BagStore, ReplicaSettings, ReplicaSpec, fit_replicas
from wsisum.evaluate.results import COLUMNS, read_metrics
from wsisum.evaluate.stacked import StackedABMIL, StackedAdamW, segment_softmax

FAST = ["threads=1", "replicas.max_epochs=4", "replicas.patience=2", "replicas.hidden_dim=32", "replicas.att_dim=16"]


def toy_store(n: int = 48, dim: int = 8, seed: int = 0, signal: float = 3.0) -> BagStore:
    """Bags of 5-40 noise patches; a class-1 bag has a few patches shifted along dim 0 (a MIL task)."""
    g = torch.Generator().manual_seed(seed)
    feats, targets = [], []
    for i in range(n):
        x = torch.randn(int(torch.randint(5, 40, (1,), generator=g)), dim, generator=g)
        y = i % 2
        if y:
            x[:3, 0] += signal
        feats.append(x)
        targets.append(y)
    return BagStore(feats, targets, [f"s{i}" for i in range(n)])


def specs_for(n: int, pairs: list[tuple[int, int]]) -> list[ReplicaSpec]:
    """Replicas (fold, seed): fold k tests on a fifth of the bags, validates on the next fifth."""
    out = []
    for fold, seed in pairs:
        ids = list(range(n))
        k = n // 5
        test = tuple(ids[fold * k : (fold + 1) * k])
        val = tuple(ids[((fold + 1) % 5) * k : ((fold + 1) % 5 + 1) * k])
        train = tuple(i for i in ids if i not in test and i not in val)
        out.append(ReplicaSpec(fold, seed, train, val, test))
    return out


SETTINGS = ReplicaSettings(batch_size=4, lr=2e-3, max_epochs=8, patience=3, hidden_dim=16, att_dim=8)


def _values(results, metric: str) -> list[float]:
    return [r.values[metric] for r in results]


def test_segment_softmax_sums_to_one_per_bag_and_matches_softmax() -> None:
    seg = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 3, 3])
    scores = torch.randn(10) * 30  # large scores: the per-segment max keeps exp finite
    s = segment_softmax(scores, seg, 4)
    assert torch.allclose(torch.zeros(4).index_add(0, seg, s), torch.ones(4))
    for b in range(4):
        assert torch.allclose(s[seg == b], torch.softmax(scores[seg == b], 0))


def test_a_replica_is_the_abmil_architecture_and_both_layouts_agree() -> None:
    store = toy_store(10)
    model = StackedABMIL([torch.Generator().manual_seed(i) for i in range(3)], 8, 3, 16, 8).eval()
    x, seg = store.packed([1, 4, 7])
    logits, scores = model.forward_one(2, x, seg, 3)
    abmil = model.to_abmil(2)
    for j, b in enumerate([1, 4, 7]):
        f = store.features[store.offsets[b] : store.offsets[b + 1]]
        out = abmil(f[None])
        assert torch.allclose(out.logits[0], logits[j], atol=1e-5)
        assert torch.allclose(out.attention[0], scores[seg == j], atol=1e-5)
    xp, sp, n_bags, n_real = store.padded([[1, 4, 7], [0, 2]])
    padded = model.forward_padded([2, 0], xp, sp, n_bags, n_real=n_real)
    x0, s0 = store.packed([0, 2])
    assert torch.allclose(padded[0], logits, atol=1e-5)
    assert torch.allclose(padded[1, :2], model.forward_one(0, x0, s0, 2)[0], atol=1e-5)


def test_stacked_adamw_is_torch_adamw_per_replica_and_leaves_idle_replicas_alone() -> None:
    p = torch.nn.Parameter(torch.randn(3, 4, 5))
    alone = torch.nn.Parameter(p.detach()[1].clone())
    idle = p.detach()[0].clone()
    ours = StackedAdamW([p], 3, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([alone], lr=1e-2, weight_decay=0.1)
    for k in range(15):
        ours.zero_grad()
        ref.zero_grad()
        (p**3).sum().backward()
        (alone**3).sum().backward()
        ours.step([1] if k % 2 else [1, 2])  # replica 2 sits out every other step, replica 0 all of them
        ref.step()
    assert torch.allclose(p[1], alone, atol=1e-6)
    assert torch.equal(p[0].detach(), idle) and ours.steps.tolist() == [0, 15, 8]


@pytest.mark.parametrize("padded", [True, False])
def test_replicas_with_the_same_fold_and_seed_give_identical_results(padded: bool, monkeypatch) -> None:
    monkeypatch.setattr(rep, "PADDED_MAX_PATCHES", 10**9 if padded else 0)
    store = toy_store()
    results, curves = fit_replicas(store, specs_for(len(store), [(0, 1), (2, 0), (0, 1)]), 2, SETTINGS)
    a, b = results[0], results[2]
    assert a.values["test_loss"] == b.values["test_loss"] and a.values["best_epoch"] == b.values["best_epoch"]
    assert [p["probs"] for p in a.predictions] == [p["probs"] for p in b.predictions]
    assert results[1].values["test_loss"] != a.values["test_loss"]
    again, _ = fit_replicas(store, specs_for(len(store), [(0, 1)]), 2, SETTINGS)  # and from run to run
    assert again[0].values["test_loss"] == pytest.approx(a.values["test_loss"], abs=1e-6)
    assert {c["replica"] for c in curves} == {0, 1, 2}


@pytest.mark.parametrize("padded", [True, False])
def test_a_replica_does_not_depend_on_the_others_trained_with_it(padded: bool, monkeypatch) -> None:
    monkeypatch.setattr(rep, "PADDED_MAX_PATCHES", 10**9 if padded else 0)
    store = toy_store()
    # different folds: different train set sizes, so the replicas step a different number of times
    mixed = specs_for(len(store), [(1, 3), (0, 0), (4, 7)])
    mixed[2] = ReplicaSpec(4, 7, mixed[2].train[:20], mixed[2].val, mixed[2].test)
    together, _ = fit_replicas(store, mixed, 2, SETTINGS)
    alone, _ = fit_replicas(store, [mixed[1]], 2, SETTINGS)
    for metric in ("test_loss", "test_auroc", "val_loss", "best_epoch", "epochs"):
        assert together[1].values[metric] == pytest.approx(alone[0].values[metric], abs=1e-5), metric


def test_learns_a_separable_toy_task_and_stops_early() -> None:
    store = toy_store(n=80, signal=4.0)
    settings = ReplicaSettings(batch_size=4, lr=3e-3, max_epochs=40, patience=4, hidden_dim=16, att_dim=8)
    results, curves = fit_replicas(store, specs_for(len(store), [(0, 0), (3, 1)]), 2, settings)
    for r in results:
        assert r.values["test_auroc"] > 0.95, r.values
        assert 0 <= r.values["best_epoch"] < r.values["epochs"] <= 40
        assert r.values["epoch_time_s"] > 0 and r.values["n_test"] == 16
    assert max(c["epoch"] for c in curves) < 39  # every replica stalled before max_epochs


def test_settings_refuse_an_unknown_monitor() -> None:
    with pytest.raises(ValueError, match="monitor"):
        ReplicaSettings(monitor="train/loss")


def _app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app("evaluate", *args, cwd=cwd)


def test_engine_replicas_through_the_app_writes_seeded_metrics_and_curves(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _app(
        f"data.root={tiny_cohort}",
        "task=syn_brca",
        "engine=replicas",
        "folds=[0,1]",
        "seeds=[0,1]",
        f"paths.output_dir={out}",
        *FAST,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = read_metrics(out / "metrics.csv")
    assert list(df.columns) == list(COLUMNS)
    assert set(zip(df["fold"], df["seed"])) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(df["sampler"]) == {"full"} and set(df["mil"]) == {"abmil"}
    auroc = df[df["metric"] == "test_auroc"]
    assert len(auroc) == 4 and auroc["value"].between(0, 1).all()
    curves = pd.read_csv(out / "curves.csv")
    assert list(curves.columns) == ["replica", "fold", "seed", "epoch", "train_loss", "val_loss", "val_auroc"]
    assert set(curves["replica"]) == {0, 1, 2, 3} and curves["epoch"].max() <= 3
    pred = pd.read_csv(out / "predictions" / "fold_1_seed_0.csv")
    n_test = df[(df["metric"] == "n_test") & (df["fold"] == 1) & (df["seed"] == 0)]["value"].item()
    assert len(pred) == n_test and list(pred.columns)[:3] == ["slide_id", "target", "prediction"]


def test_engine_replicas_refuses_transmil_with_one_line(tiny_cohort: Path, tmp_path: Path) -> None:
    proc = _app(f"data.root={tiny_cohort}", "task=syn_brca", "engine=replicas", "mil=transmil", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: engine=replicas trains ABMIL only (mil=transmil): use engine=lightning for mil=transmil"]


def test_old_metrics_files_read_as_seed_zero(tmp_path: Path) -> None:
    old = tmp_path / "metrics.csv"
    old.write_text("task,sampler,budget,mil,fold,metric,value\nt,full,,abmil,0,test_auroc,0.9\n")
    df = read_metrics(old)
    assert list(df.columns) == list(COLUMNS) and df["seed"].tolist() == [0]
