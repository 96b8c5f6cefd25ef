"""Scale: 100k-patch slides through k-means, summarization and one MIL training step, in bounded memory.

Every measurement runs in a fresh subprocess: pytest's own peak RSS is the high-water mark of every
earlier test, and a subprocess's is its own. A child forgets its import/load peak (/proc clear_refs)
and reports (peak RSS - RSS before the work), so a bound is on what the work adds, not on torch.

Bounds are `ratio x the bag as float32 (N x D x 4) + fixed` (the small-bag test: `fixed + KB per
patch x N`), each from measured figures (scripts/bench_scale.py) with headroom; the measured values
are in the comment beside each. The slow tests generate the `large` preset (6 slides, 10k-100k patches, D=768)
once (~10 s, 0.4 GB on disk, removed afterwards) and take ~70 s on 2 cores, TransMIL's step 30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MB = 2**20

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak-RSS measurement needs Linux /proc (VmHWM reset)"
)

# What every child shares: RSS fields of /proc/self/status, and a reset of the peak before the work.
_PRELUDE = """
import ctypes, gc, json, sys
from pathlib import Path

def rss_mb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)

def reset_peak():
    gc.collect()
    libc = ctypes.CDLL(None)
    if hasattr(libc, "malloc_trim"):  # free heap back to the OS: reusing it in the work then counts as growth
        libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return rss_mb("VmRSS")
"""


def _child(script: str, *args: object, timeout: int = 600) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Fast: the memory claim of every MIL model on a 20k-patch bag (runs in the default CI selection)
# ----------------------------------------------------------------------------------------------

# One training step per model (default configs, D=256 features stored as float16), the peak reset
# before it. No warm-up step: one-time allocations (thread pools, kernels) measured < 10 MB, and
# the time is better spent on the bag size.
_MIL_STEPS = """
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from wsisum.apps._app import CONFIG_DIR

n, d = int(sys.argv[1]), int(sys.argv[2])

def step(model, n):
    feats = torch.randn(1, n, d, generator=torch.Generator().manual_seed(n)).half()
    target = torch.tensor([1])
    base = reset_peak()
    out = model(feats.float(), torch.ones(1, n, dtype=torch.bool), target=target)  # as MILClassifier does
    loss = F.cross_entropy(out.logits, target)
    if out.aux_loss is not None:
        loss = (1 - model.aux_weight) * loss + model.aux_weight * out.aux_loss
    loss.backward()
    increase = rss_mb("VmHWM") - base
    grads = [p.grad for p in model.parameters()]
    ok = bool(torch.isfinite(loss)) and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    model.zero_grad(set_to_none=True)
    return {"increase_mb": increase, "ok": ok}

res = {}
for name in ("meanpool", "abmil", "clam_sb", "transmil"):
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(f"{CONFIG_DIR}/mil/{name}.yaml"))(in_dim=d, n_classes=4).train()
    res[name] = step(model, n)
print(json.dumps(res))
"""

# Bound = fixed + KB per patch x N. Measured peaks added at 20k patches, D=256 (2 cores, several runs):
# meanpool 39-45 MB (a float32 copy and the masked product, 2 KB per patch), ABMIL 186-228, CLAM-SB
# 180-229, TransMIL 979-1078 (two Nyström layers + PPEG on 512-d tokens, ~33 KB per patch, plus ~300-400 MB
# whatever the bag size: the 256-landmark pseudo-inverse iterations kept for backward, 8 heads x 2
# layers). Peaks vary by ~10 % from run to run (allocation order across threads). A regression to
# torchmil's NystromAttention, which keeps three (heads x N x landmarks) float32 matrices per layer,
# adds 48 KB per patch (~0.9 GB here) and fails (checked: explicit softmax matrices in place of the fused
# attention give TransMIL +1775 MB here, and +8.1 GB on the slow test's 100k bag); N^2 fails by far.
_KB_PER_PATCH = {"meanpool": 4, "abmil": 16, "clam_sb": 16, "transmil": 48}
_FIXED_MB = {"meanpool": 64, "abmil": 64, "clam_sb": 64, "transmil": 640}


def test_mil_training_memory_is_bounded_on_a_20k_bag() -> None:
    """~10 s: one training step of every MIL model stays under its measured per-patch bound."""
    n, d = 20_000, 256
    res = _child(_MIL_STEPS, n, d, timeout=120)
    assert set(res) == set(_KB_PER_PATCH)
    for name, r in res.items():
        assert r["ok"], f"{name}: non-finite loss or a parameter without a finite gradient"
        bound = _FIXED_MB[name] + _KB_PER_PATCH[name] * n / 1024
        assert r["increase_mb"] < bound, f"{name}: +{r['increase_mb']:.0f} MB for {n} patches (bound {bound:.0f} MB)"


# ----------------------------------------------------------------------------------------------
# Slow: the `large` preset, the 100k-patch slide
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from wsisum.data.bags import bag_info
    from wsisum.data.cohort import Cohort
    from wsisum.data.synthetic import generate_cohort
    from wsisum.data.synthetic.preset import load_preset

    root = tmp_path_factory.mktemp("large") / "cohort"
    preset = load_preset("large")
    generate_cohort(root, preset, seed=0, progress=False)
    cohort = Cohort(root)
    infos = {sid: bag_info(rec.bag_path) for sid, rec in cohort.slides.items()}
    biggest = max(infos, key=lambda s: infos[s].n_patches)
    assert infos[biggest].n_patches == 100_000 and infos[biggest].dim == 768  # what the preset promises
    yield {"root": root, "cohort": cohort, "infos": infos, "biggest": biggest}
    shutil.rmtree(root, ignore_errors=True)  # pytest keeps the last 3 sessions' temp dirs: 0.4 GB each


def _bag_mb(info) -> float:
    return info.n_patches * info.dim * 4 / MB


_KMEANS = """
import numpy as np
from wsisum.data.bags import read_bag
from wsisum.sampling.kmeans import kmeans

bag = read_bag(sys.argv[1])
base = reset_peak()
res = kmeans(bag.features, 50, seed=0, slide_id=Path(sys.argv[1]).stem)
increase = rss_mb("VmHWM") - base
a = res.assign
print(json.dumps({
    "increase_mb": increase, "k": res.k, "n": int(a.shape[0]), "min": int(a.min()), "max": int(a.max()),
    "used": int(len(np.unique(a))), "finite": bool(np.isfinite(res.centroids).all() and np.isfinite(res.sqdist).all()),
}))
"""


@pytest.mark.slow
def test_kmeans_on_the_100k_patch_slide_in_bounded_memory(large_cohort: dict) -> None:
    info = large_cohort["infos"][large_cohort["biggest"]]
    r = _child(_KMEANS, info.path)
    assert r["k"] == 50 and r["n"] == 100_000 and r["finite"]
    assert r["min"] >= 0 and r["max"] < 50 and r["used"] >= 45  # k-means++ start: clusters do not collapse
    # measured +375 MB = 1.28 x the float32 bag (the float32 copy of the float16 features, the faiss
    # search over all 100k rows, a 12.8k-row training subsample)
    bound = 2 * _bag_mb(info) + 128
    assert r["increase_mb"] < bound, f"k-means: +{r['increase_mb']:.0f} MB (bound {bound:.0f} MB)"


def _peak_rss_mb(cmd: list[str]) -> tuple[int, float, str]:
    """Exit code, peak RSS (MB) of the largest process of `cmd` (wait4: exact, that child only), output."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO) as proc:
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, output


def _app(name: str) -> list[str]:
    script = Path(sys.executable).parent / f"wsisum-{name}"
    return [str(script)] if script.exists() else [sys.executable, "-m", f"wsisum.apps.{name}"]


@pytest.mark.slow
def test_summarize_the_large_cohort_in_bounded_memory(large_cohort: dict, tmp_path: Path) -> None:
    """All 254k patches in one process (workers=0): the peak is one slide's worth, not the cohort's."""
    root, infos, budget = large_cohort["root"], large_cohort["infos"], 64
    out = tmp_path / "summaries"
    # what the app costs before any slide: its imports (torch, faiss, hydra, wsisum)
    rc, imports_mb, text = _peak_rss_mb(
        [sys.executable, "-c", "import faiss, torch, wsisum.apps.summarize, wsisum.sampling.samplers"]
    )
    assert rc == 0, text
    cmd = [
        *_app("summarize"),
        f"data.root={root}",
        "sampler=kmeans",
        f"budget={budget}",
        f"out_dir={out}",
        "workers=0",
        "progress=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    rc, peak_mb, text = _peak_rss_mb(cmd)
    assert rc == 0, text[-3000:]
    for sid, rec in large_cohort["cohort"].slides.items():
        with h5py.File(out / rec.dataset / f"{sid}.h5", "r") as f:
            idx, feats, n_source = f["indices"][()], f["features"][()], int(f.attrs["n_source"])
        assert n_source == infos[sid].n_patches
        assert feats.shape == (budget, 768) and idx.shape == (budget,)
        assert len(np.unique(idx)) == budget and idx.min() >= 0 and idx.max() < n_source
        with h5py.File(rec.bag_path, "r") as f:  # the summary holds the source rows it names
            order = np.argsort(idx)
            np.testing.assert_array_equal(feats[order], f["features"][np.sort(idx)])
    # measured: 621 MB peak, 245 MB of imports: +376 MB = 1.28 x the biggest float32 bag (the k-means
    # of the 100k slide). Holding the cohort's bags (372 MB as stored) on top would break the bound.
    bag_mb = _bag_mb(infos[large_cohort["biggest"]])
    bound = imports_mb + 2 * bag_mb + 128
    assert peak_mb < bound, f"summarize: {peak_mb:.0f} MB peak (imports {imports_mb:.0f} MB, bound {bound:.0f} MB)"


_MIL_STEP = """
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from wsisum.apps._app import CONFIG_DIR
from wsisum.data.bags import read_bag
from wsisum.lit.classifier import MILClassifier

path, name, n_classes = sys.argv[1], sys.argv[2], int(sys.argv[3])
feats = torch.from_numpy(read_bag(path, metadata=False).features)  # float16, as the loaders give it
n, d = feats.shape
batch = {"features": feats[None], "mask": torch.ones(1, n, dtype=torch.bool), "target": torch.tensor([1])}
torch.manual_seed(0)
module = MILClassifier(instantiate(OmegaConf.load(f"{CONFIG_DIR}/mil/{name}.yaml"))(in_dim=d, n_classes=n_classes))
module.train()
base = reset_peak()
out = module(batch, with_target=True)  # the training step of wsisum-evaluate: forward, loss, backward
loss = module._loss(out, batch["target"])
loss.backward()
increase = rss_mb("VmHWM") - base
grads = [p.grad for p in module.parameters()]
mean = feats.float().mean(0)
print(json.dumps({
    "increase_mb": increase, "loss": float(loss.detach()), "logits": list(out.logits.shape),
    "grads_ok": all(g is not None and bool(torch.isfinite(g).all()) for g in grads),
    "attention": None if out.attention is None else list(out.attention.shape),
    "embedding_is_mean": bool(torch.allclose(out.embedding[0], mean, atol=1e-4)) if name == "meanpool" else None,
}))
"""

# Peak RSS added by one training step on the 100k x 768 bag through MILClassifier (float16 bag -> float32
# in forward), as a multiple of the float32 bag (293 MB); measured (scripts/bench_scale.py): meanpool
# +588 MB (2.0x), ABMIL +990 (3.4x), CLAM-SB +946 (3.2x), TransMIL +4236 (14.5x: ~20 saved 512-d token
# tensors over two Nyström layers and PPEG; linear in N, ~42 KB per patch). torchmil's NystromAttention
# would add ~5.6 GB per layer at this size (see wsisum/models/mil.py) and fail the TransMIL bound.
_BAG_RATIO = {"meanpool": 2.5, "abmil": 4, "clam_sb": 4, "transmil": 18}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_BAG_RATIO))
def test_mil_training_step_on_the_100k_patch_bag(large_cohort: dict, name: str) -> None:
    info = large_cohort["infos"][large_cohort["biggest"]]
    r = _child(_MIL_STEP, info.path, name, 4)
    assert r["logits"] == [1, 4] and np.isfinite(r["loss"]) and r["grads_ok"]
    if name in ("abmil", "clam_sb"):  # one score per patch: the whole bag was attended, nothing truncated
        assert r["attention"] == [1, 100_000]
    if name == "meanpool":
        assert r["embedding_is_mean"]
    bound = _BAG_RATIO[name] * _bag_mb(info) + 256
    assert r["increase_mb"] < bound, f"{name}: +{r['increase_mb']:.0f} MB (bound {bound:.0f} MB)"


@pytest.mark.slow
def test_evaluate_trains_and_tests_on_full_100k_bags_in_bounded_memory(large_cohort: dict, tmp_path: Path) -> None:
    """wsisum-evaluate, ABMIL, full bags of up to 100k patches: every patch reaches the model (no cap,
    no truncation) and the process peak stays bounded. Measured: 1767 MB peak (bench_scale.py)."""
    import pandas as pd

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "wsisum.apps.evaluate", f"data.root={large_cohort['root']}", "task=syn_camelyon17"]
    cmd += ["bags=full", "mil=abmil", "folds=[0,1]", "trainer.max_epochs=1", f"hydra.run.dir={run}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    m = pd.read_csv(run / "metrics.csv")
    biggest = _bag_mb(large_cohort["infos"][large_cohort["biggest"]])
    values = m.groupby("metric")["value"].max()
    assert values["patches_per_bag_max"] == 100_000  # 2-fold CV: the 100k slide trains in one fold, whole
    bound = 800 + 5 * biggest  # imports (~600 MB) + the biggest bag through ABMIL's step (~3.4x) + headroom
    assert values["peak_rss_mb"] < bound, f"peak {values['peak_rss_mb']:.0f} MB (bound {bound:.0f} MB)"
