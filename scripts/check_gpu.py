"""One-shot check of the CUDA paths: faiss k-means, bf16 training, batched summarization; prints a table.

    python scripts/check_gpu.py [--small] [--json FILE] [--only kmeans|train|summarize]

Rows (each check catches its own exception, so one broken path does not hide the others):

  env              torch and CUDA versions, the GPU, faiss' version and how many GPUs faiss sees
  kmeans cpu/cuda  `wsisum.sampling.kmeans.kmeans` (k=50) on a random 50-blob mixture, N=100_000 x 768
                   (--small: 5_000 x 64); the cuda row (CUDA faiss, `gpu=True` = every GPU faiss sees)
                   must give an inertia within 3 % of the cpu row's and no empty cluster; it is SKIP
                   where faiss has no GPU support (faiss-cpu installed; `make install-gpu` swaps in
                   faiss-gpu-cu12)
  train            a few AdamW steps of `SummarizerPretraining` (model=base, pool 500, batch 8, the 3
                   study teachers) under torch.autocast(bfloat16) on one fixed batch: samples/s, peak
                   memory (torch.cuda.max_memory_allocated; max RSS on CPU), the losses (finite
                   required; decreasing or not is printed), the dtype a Linear inside autocast returned
                   (bf16 required)
  train-lightning  the same module through a real `lightning.Trainer(precision="bf16-mixed", max_steps=2)`
                   over a DataLoader of synthetic bags collated by `wsisum.data.datasets.collate_bags`
  summarize        `WSISumSampler` (configs/sampler/wsisum.yaml defaults, budget 64) from a freshly
                   initialised checkpoint saved by `Trainer.save_checkpoint`, on 4 synthetic slides of
                   20_000 x 768 on cuda and the first --cpu-slides (2) of them on cpu (no new cpu slide
                   after --cpu-seconds, 90): s/slide, speed-up, the overlap of the selected indices cuda
                   vs cpu (bf16 vs fp32 scoring: printed, not required), and a repeat of the first slide
                   on the same device (the cpu repeat must select the same indices: the sampler is
                   deterministic). The k-means pool inside the sampler runs with device=auto, i.e. on
                   CUDA faiss for both rows wherever faiss has a GPU, so cpu vs cuda differ only in
                   the candidate scoring

--small (what tests/test_check_gpu.py runs) shrinks everything to CPU size: model=tiny, pool 32,
batch 2, 2 slides of 2_000 x 64, and adds cpu rows for train/train-lightning. Without CUDA every
cuda row is SKIP with the reason. Exit status 1 if any row is FAIL (SKIP is fine).

On a GPU machine with a networked venv. Expected runtime 1-3 min, an estimate: nearly all of it is the
cpu summarize row (base model, fp32: 99 s per 20k-patch slide measured on 2 CPU cores, so ~15-30 s on
16; 2 slides + the repeat, capped by --cpu-seconds); everything else took seconds at --small here:

    make install-gpu && .venv/bin/python scripts/check_gpu.py --json $OUT/check_gpu.json

On this workplace's lent device machine (no network there; its python3 has torch+CUDA, lightning,
h5py, rich, pyyaml, but no faiss): prepare wheels here once (faiss-gpu-cu12 is 48 MB and needs the
CUDA 12 runtime and cuBLAS wheels besides, far over the 64 MiB that travels, so the kmeans cuda row
is expected to be SKIP there):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl faiss-cpu==1.15.1

then one `run` with carry=[".whl"], timeout_s=420:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 scripts/check_gpu.py --json $OUT/check_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a plain checkout (the device machine has no editable install)
    sys.path.insert(0, str(REPO))

TEACHERS = {"TITAN": 768, "CHIEF": 768, "PRISM": 1280}
SMALL_TEACHERS = {"TITAN": 12, "CHIEF": 12, "PRISM": 20}
K = 50
BUDGET = 64
INERTIA_TOL = 0.03  # GPU vs CPU k-means inertia, relative
CHECKS = ("kmeans", "train", "summarize")


@dataclass
class Row:
    check: str
    device: str
    size: str = ""
    seconds: float | None = None
    key: str = ""
    status: str = "OK"  # OK | FAIL | SKIP
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sizes:
    kmeans_n: int
    kmeans_d: int
    model: str
    pool: int
    batch: int
    steps: int
    dim: int
    teachers: dict[str, int]
    slides: int
    patches: int
    cpu_slides: int
    cpu_seconds: float = 90.0  # no further cpu summarize slide once this much time went into them


def sizes(small: bool, cpu_slides: int | None) -> Sizes:
    if small:
        return Sizes(5_000, 64, "tiny", 32, 2, 3, 64, SMALL_TEACHERS, 2, 2_000, cpu_slides or 2)
    return Sizes(100_000, 768, "base", 500, 8, 5, 768, TEACHERS, 4, 20_000, cpu_slides or 2)


def size_label(check: str, device: str, sz: Sizes) -> str:
    if check == "kmeans":
        return f"{sz.kmeans_n}x{sz.kmeans_d} k={K}"
    if check in ("train", "train-lightning"):
        return f"model={sz.model} pool={sz.pool} batch={sz.batch} " + ("bf16" if check == "train" else "bf16-mixed")
    if check == "summarize":
        n_slides = sz.slides if device == "cuda" else min(sz.cpu_slides, sz.slides)
        return f"{n_slides} slides x {sz.patches}x{sz.dim} model={sz.model} K={BUDGET}"
    return ""


def cuda_ok() -> bool:
    import torch

    return torch.cuda.is_available()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def one_line(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0] if msg else ''}"[:200]


def blobs(n: int, d: int, seed: int, n_blobs: int = K) -> np.ndarray:
    """A float32 mixture of `n_blobs` Gaussian blobs (k-means has a clear optimum to agree on)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, d)).astype(np.float32) * 3
    label = rng.integers(n_blobs, size=n)
    return centres[label] + rng.standard_normal((n, d), dtype=np.float32)


def model_cfg(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())


# ----------------------------------------------------------------------------------------------
# env
# ----------------------------------------------------------------------------------------------


def check_env(_: Sizes, __: dict) -> list[Row]:
    import torch

    fig: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda_ok()}
    fig["gpu"] = torch.cuda.get_device_name(0) if cuda_ok() else None
    fig["bf16_supported"] = bool(cuda_ok() and torch.cuda.is_bf16_supported())
    try:
        import faiss

        fig["faiss"] = faiss.__version__
        fig["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    except Exception as err:
        fig["faiss"], fig["faiss_gpus"] = f"not importable ({one_line(err)})", 0
    key = (
        f"torch {fig['torch']}, CUDA {fig['cuda']}, GPU {fig['gpu'] or 'none'}, "
        f"faiss {fig['faiss']} ({fig['faiss_gpus']} GPUs)"
    )
    device = "cuda" if cuda_ok() else "cpu"
    return [Row("env", device, f"{os.cpu_count()} CPUs", None, key, figures=fig)]


# ----------------------------------------------------------------------------------------------
# kmeans
# ----------------------------------------------------------------------------------------------


def run_kmeans(x: np.ndarray, device: str) -> tuple[Any, float]:
    from wsisum.sampling.kmeans import kmeans

    t0 = time.perf_counter()
    res = kmeans(x, K, seed=0, slide_id="check_gpu", device=device)
    return res, time.perf_counter() - t0


def kmeans_figures(res: Any, n: int) -> dict[str, Any]:
    counts = np.bincount(res.assign, minlength=K)
    return {
        "inertia": float(res.sqdist.sum()),
        "inertia_per_point": float(res.sqdist.sum() / n),
        "non_empty": int((counts > 0).sum()),
        "k": int(res.k),
    }


def check_kmeans_cpu(sz: Sizes, state: dict) -> list[Row]:
    x = blobs(sz.kmeans_n, sz.kmeans_d, seed=1)
    res, dt = run_kmeans(x, "cpu")
    fig = kmeans_figures(res, len(x))
    state["kmeans_cpu"] = fig | {"seconds": dt}
    row = Row("kmeans", "cpu", size_label("kmeans", "cpu", sz), dt, figures=fig)
    row.key = f"inertia/N {fig['inertia_per_point']:.2f}, {fig['non_empty']}/{K} clusters non-empty"
    if not (math.isfinite(fig["inertia"]) and fig["k"] == K and fig["non_empty"] == K):
        row.status, row.reason = "FAIL", f"k={fig['k']}, non-empty {fig['non_empty']}, inertia {fig['inertia']}"
    return [row]


def check_kmeans_cuda(sz: Sizes, state: dict) -> list[Row]:
    import faiss

    from wsisum.sampling.kmeans import gpu_available

    row = Row("kmeans", "cuda", size_label("kmeans", "cuda", sz))
    if not gpu_available():
        gpu_faiss = hasattr(faiss, "StandardGpuResources")
        row.status = "SKIP"
        row.reason = "faiss sees no GPU" if gpu_faiss else "faiss has no GPU support (faiss-cpu; `make install-gpu`)"
        return [row]
    x = blobs(sz.kmeans_n, sz.kmeans_d, seed=1)
    run_kmeans(x[:2_000], "cuda")  # GPU resources and cuBLAS initialise outside the timing
    res, dt = run_kmeans(x, "cuda")
    fig = kmeans_figures(res, len(x))
    row.seconds, row.figures = dt, fig
    cpu = state.get("kmeans_cpu")
    parts = [f"{fig['non_empty']}/{K} non-empty"]
    bad = []
    if cpu:
        fig["inertia_ratio_vs_cpu"] = fig["inertia"] / cpu["inertia"]
        fig["speedup_vs_cpu"] = cpu["seconds"] / dt
        parts = [f"inertia gpu/cpu {fig['inertia_ratio_vs_cpu']:.4f}", *parts, f"x{fig['speedup_vs_cpu']:.1f} vs cpu"]
        if not abs(fig["inertia_ratio_vs_cpu"] - 1) <= INERTIA_TOL:
            bad.append(f"inertia {fig['inertia_ratio_vs_cpu']:.4f} x the cpu one (tolerance {INERTIA_TOL:.0%})")
    else:
        parts.append("no cpu row to compare")
    if fig["non_empty"] != K or not math.isfinite(fig["inertia"]):
        bad.append(f"{K - fig['non_empty']} empty clusters, inertia {fig['inertia']}")
    row.key = ", ".join(parts)
    if bad:
        row.status, row.reason = "FAIL", "; ".join(bad)
    return [row]


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------


def synthetic_batch(b: int, n: int, d: int, teachers: dict[str, int], device: str) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "features": torch.randn(b, n, d, generator=g).to(device),
        "mask": torch.ones(b, n, dtype=torch.bool, device=device),
        "pos": (torch.rand(b, n, 2, generator=g) * 100).to(device),
        "teachers": {t: torch.randn(b, dd, generator=g).to(device) for t, dd in teachers.items()},
        "teacher_present": {t: torch.ones(b, dtype=torch.bool, device=device) for t in teachers},
    }


def watch_dtype(module: Any) -> list:
    """Record the output dtype of a Linear inside the encoder (bf16 under autocast)."""
    seen: list = []
    linear = module.model.encoder[0].mlp[0]
    linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_train(sz: Sizes, device: str) -> list[Row]:
    import torch

    from wsisum.lit.pretrain import SummarizerPretraining

    row = Row("train", device, size_label("train", device, sz))
    if device == "cuda" and not cuda_ok():
        row.status, row.reason = "SKIP", "no CUDA device (torch.cuda.is_available() is False)"
        return [row]
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        row.status, row.reason = "SKIP", f"{torch.cuda.get_device_name(0)} has no bf16"
        return [row]
    torch.manual_seed(0)
    module = SummarizerPretraining(sz.dim, sz.teachers, model=model_cfg(sz.model)).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = synthetic_batch(sz.batch, sz.pool, sz.dim, sz.teachers, device)
    dtypes = watch_dtype(module)
    losses: list[float] = []

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = module.step(data, torch.Generator().manual_seed(0))["loss"]  # one fixed mask: loss should fall
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    step()  # warm-up (CUDA context, kernels) outside the timing
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(sz.steps):
        step()
    sync(device)
    dt = time.perf_counter() - t0
    fig = {
        "samples_per_s": sz.steps * sz.batch / dt,
        "peak_mb": peak_mb(device),
        "peak_kind": "cuda max_memory_allocated" if device == "cuda" else "max RSS",
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "loss_decreasing": losses[-1] < losses[0],
        "linear_dtype": str(dtypes[-1]).replace("torch.", "") if dtypes else None,
        "steps": sz.steps,
    }
    row.seconds, row.figures = dt, fig
    trend = "decreasing" if fig["loss_decreasing"] else "NOT decreasing"
    row.key = (
        f"{fig['samples_per_s']:.1f} samples/s, peak {fig['peak_mb']:.0f} MB, "
        f"loss {losses[0]:.3f}->{losses[-1]:.3f} ({trend}), linear out {fig['linear_dtype']}"
    )
    bad = []
    if not all(math.isfinite(v) for v in losses):
        bad.append(f"non-finite loss {losses}")
    if fig["linear_dtype"] != "bfloat16":
        bad.append(f"autocast gave {fig['linear_dtype']}, not bfloat16")
    if bad:
        row.status, row.reason = "FAIL", "; ".join(bad)
    return [row]


class Bags:
    """A map-style dataset of synthetic bag items, as `PoolTransform` hands them to `collate_bags`."""

    def __init__(self, n_items: int, n: int, d: int, teachers: dict[str, int]):
        self.n_items, self.n, self.d, self.teachers = n_items, n, d, teachers

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(i)
        n = self.n - i % 3  # unequal bags: collate pads, the mask matters
        coords = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(1), indexing="ij"), -1).reshape(n, 2) * 256
        return {
            "slide_id": f"s{i}",
            "path": f"/synthetic/s{i}.h5",
            "features": torch.randn(n, self.d, generator=g).half(),  # bags arrive in their stored float16
            "coords": coords.long(),
            "pos": (coords / 256).float(),
            "teachers": {t: torch.randn(dd, generator=g) for t, dd in self.teachers.items()},
            "teacher_present": dict.fromkeys(self.teachers, True),
        }


def check_train_lightning(sz: Sizes, device: str) -> list[Row]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from wsisum.data.datasets import collate_bags
    from wsisum.lit.pretrain import SummarizerPretraining

    max_steps = 2
    row = Row("train-lightning", device, size_label("train-lightning", device, sz))
    if device == "cuda" and not cuda_ok():
        row.status, row.reason = "SKIP", "no CUDA device (torch.cuda.is_available() is False)"
        return [row]
    torch.manual_seed(0)
    module = SummarizerPretraining(sz.dim, sz.teachers, model=model_cfg(sz.model), warmup_ratio=0.5)
    dtypes = watch_dtype(module)
    loader = DataLoader(Bags(sz.batch * max_steps, sz.pool, sz.dim, sz.teachers), sz.batch, collate_fn=collate_bags)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed",
            max_steps=max_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        sync(device)
        dt = time.perf_counter() - t0
    loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
    loss = float(loss) if loss is not None else float("nan")
    param_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()})
    fig = {
        "global_step": int(trainer.global_step),
        "loss": loss,
        "linear_dtype": str(dtypes[-1]).replace("torch.", "") if dtypes else None,
        "param_dtypes": param_dtypes,
        "param_device": str(next(module.parameters()).device),
    }
    row.seconds, row.figures = dt, fig
    row.key = (
        f"{fig['global_step']} steps on {fig['param_device']}, loss {loss:.3f}, "
        f"linear out {fig['linear_dtype']}, params {'/'.join(param_dtypes)}"
    )
    bad = []
    if fig["global_step"] != max_steps:
        bad.append(f"ran {fig['global_step']} of {max_steps} steps")
    if not math.isfinite(loss):
        bad.append("loss not finite")
    if fig["linear_dtype"] != "bfloat16":
        bad.append(f"bf16-mixed gave {fig['linear_dtype']} activations")
    if param_dtypes != ["float32"]:
        bad.append(f"parameters are {param_dtypes}, not float32 master weights")
    if bad:
        row.status, row.reason = "FAIL", "; ".join(bad)
    return [row]


# ----------------------------------------------------------------------------------------------
# summarize
# ----------------------------------------------------------------------------------------------


def make_checkpoint(sz: Sizes, path: Path) -> Path:
    """A freshly initialised summarizer saved the way wsisum-train saves one (hparams + fusion buffers)."""
    import lightning as L
    import torch

    from wsisum.lit.pretrain import SummarizerPretraining
    from wsisum.teachers.fusion import fit_fusion

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    fusion = fit_fusion({t: [rng.standard_normal(d) for _ in range(4)] for t, d in sz.teachers.items()})
    module = SummarizerPretraining(sz.dim, sz.teachers, model=model_cfg(sz.model))
    module.set_fusion(fusion)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(path.parent),
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path, weights_only=True)
    return path


def synthetic_slide(i: int, n: int, d: int, teachers: dict[str, int]) -> dict[str, Any]:
    rng = np.random.default_rng(100 + i)
    side = math.ceil(math.sqrt(n))
    grid = np.arange(n)
    return {
        "slide_id": f"slide{i}",
        "features": blobs(n, d, seed=100 + i, n_blobs=20).astype(np.float16),  # stored dtype of real bags
        "coords": np.stack([grid % side, grid // side], 1).astype(np.int64) * 256,
        "teachers": {t: rng.standard_normal(dd).astype(np.float32) for t, dd in teachers.items()},
    }


def summarize_slides(
    ckpt: Path, slides: list[dict], device: str, seconds: float | None = None
) -> tuple[list[Any], list[float]]:
    """Summarize `slides` in order; with `seconds`, start no new slide once that much time is spent."""
    from wsisum.summarize.search import WSISumSampler

    sampler = WSISumSampler(str(ckpt), device=device)
    sels, secs = [], []
    for s in slides:
        if seconds is not None and secs and sum(secs) > seconds:
            break
        t0 = time.perf_counter()
        sels.append(
            sampler.select(s["features"], BUDGET, slide_id=s["slide_id"], coords=s["coords"], teachers=s["teachers"])
        )
        sync(device)
        secs.append(time.perf_counter() - t0)
    return sels, secs


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(np.intersect1d(a, b)) / max(len(a), 1)


def check_summarize(sz: Sizes, device: str, state: dict) -> list[Row]:
    from wsisum.summarize.search import load_summarizer, resolve_device

    n_slides = sz.slides if device == "cuda" else min(sz.cpu_slides, sz.slides)
    row = Row("summarize", device, size_label("summarize", device, sz))
    if device == "cuda" and not cuda_ok():
        row.status, row.reason = "SKIP", "no CUDA device (torch.cuda.is_available() is False)"
        return [row]
    if "ckpt" not in state:
        state["ckpt_dir"] = tempfile.TemporaryDirectory()
        state["ckpt"] = make_checkpoint(sz, Path(state["ckpt_dir"].name) / "init.ckpt")
    ckpt = state["ckpt"]
    slides = [synthetic_slide(i, sz.patches, sz.dim, sz.teachers) for i in range(n_slides)]
    load_summarizer(ckpt, resolve_device(device))  # model load outside the timing
    if device == "cuda":  # kernels and cuBLAS initialise outside the timing
        summarize_slides(ckpt, [synthetic_slide(99, 2 * BUDGET + 500, sz.dim, sz.teachers)], device)
    sels, secs = summarize_slides(ckpt, slides, device, sz.cpu_seconds if device == "cpu" else None)
    if len(sels) < n_slides:
        n_slides = len(sels)
        row.size = f"{n_slides} slides x {sz.patches}x{sz.dim} model={sz.model} K={BUDGET} (time cap)"
    repeat, _ = summarize_slides(ckpt, slides[:1], device)
    scores = [float(s.score) for s in sels]
    valid = all(len(np.unique(s.indices)) == BUDGET for s in sels)
    fig: dict[str, Any] = {
        "slides": n_slides,
        "s_per_slide": float(np.mean(secs)),
        "scores": scores,
        "n_scored": [int(s.attrs["n_scored"]) for s in sels],
        "repeat_overlap": overlap(sels[0].indices, repeat[0].indices),
        "repeat_score_diff": abs(float(repeat[0].score) - scores[0]),
    }
    state[f"summarize_{device}"] = {"sels": sels, "s_per_slide": fig["s_per_slide"], "scores": scores}
    parts = [f"{fig['s_per_slide']:.2f} s/slide", f"score {np.mean(scores):.4f}"]
    cpu = state.get("summarize_cpu")
    if device == "cuda" and cpu:
        common = min(len(cpu["sels"]), len(sels))
        fig["speedup_vs_cpu"] = cpu["s_per_slide"] / fig["s_per_slide"]
        fig["overlap_vs_cpu"] = float(
            np.mean([overlap(cpu["sels"][i].indices, sels[i].indices) for i in range(common)])
        )
        fig["score_diff_vs_cpu"] = float(np.max(np.abs(np.subtract(cpu["scores"][:common], scores[:common]))))
        parts += [f"x{fig['speedup_vs_cpu']:.1f} vs cpu", f"overlap vs cpu {fig['overlap_vs_cpu']:.2f}"]
    parts.append(f"repeat overlap {fig['repeat_overlap']:.2f}")
    row.seconds, row.figures, row.key = float(np.sum(secs)), fig, ", ".join(parts)
    bad = []
    if not valid:
        bad.append("a selection has duplicate indices")
    if not all(math.isfinite(v) for v in scores):
        bad.append(f"non-finite scores {scores}")
    if device == "cpu" and fig["repeat_overlap"] != 1.0:
        bad.append(f"cpu repeat selected other indices (overlap {fig['repeat_overlap']:.2f}): not deterministic")
    if bad:
        row.status, row.reason = "FAIL", "; ".join(bad)
    return [row]


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------


def guarded(check: str, device: str, fn, *args) -> list[Row]:
    t0 = time.perf_counter()
    try:
        return fn(*args)
    except Exception as err:  # one broken path must not hide the others
        traceback.print_exc(file=sys.stderr)
        size = size_label(check, device, args[0]) if isinstance(args[0], Sizes) else ""
        return [Row(check, device, size, time.perf_counter() - t0, status="FAIL", reason=one_line(err))]


def plan(sz: Sizes, small: bool, only: str | None, state: dict) -> list[tuple]:
    steps: list[tuple] = [("env", "-", check_env, sz, state)]
    if only in (None, "kmeans"):
        steps += [("kmeans", "cpu", check_kmeans_cpu, sz, state), ("kmeans", "cuda", check_kmeans_cuda, sz, state)]
    if only in (None, "train"):
        for device in ("cpu", "cuda") if small else ("cuda",):
            steps += [
                ("train", device, check_train, sz, device),
                ("train-lightning", device, check_train_lightning, sz, device),
            ]
    if only in (None, "summarize"):
        steps += [
            ("summarize", "cpu", check_summarize, sz, "cpu", state),
            ("summarize", "cuda", check_summarize, sz, "cuda", state),
        ]
    return steps


def fmt_seconds(s: float | None) -> str:
    return "" if s is None else f"{s:.2f}"


def print_table(rows: list[Row], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"OK": "green", "FAIL": "bold red", "SKIP": "yellow"}
    table = Table(title=title)
    for col, just in (("check", "left"), ("device", "left"), ("size", "left"), ("seconds", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    table.add_column("key figure", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for r in rows:
        st = f"[{colour[r.status]}]{r.status}[/]"
        table.add_row(r.check, r.device, r.size, fmt_seconds(r.seconds), r.key, st, r.reason)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU-sized problems (the test's mode)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--only", choices=CHECKS, help="run only this check (and the env row)")
    ap.add_argument("--cpu-slides", type=int, default=None, help="slides summarized on cpu (default 2)")
    ap.add_argument(
        "--cpu-seconds", type=float, default=90.0, help="start no further cpu summarize slide past this (default 90)"
    )
    args = ap.parse_args(argv)
    sz = sizes(args.small, args.cpu_slides)
    sz.cpu_seconds = args.cpu_seconds
    with contextlib.suppress(ImportError):  # lightning sets its loggers to INFO on import: import it, then quiet
        import lightning  # noqa: F401
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    state: dict = {}
    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        for check, device, fn, *fn_args in plan(sz, args.small, args.only, state):
            rows += guarded(check, device, fn, *fn_args)
    finally:
        if "ckpt_dir" in state:
            state["ckpt_dir"].cleanup()
    total = time.perf_counter() - t0
    failed = [r for r in rows if r.status == "FAIL"]
    print_table(rows, f"check_gpu {'--small ' if args.small else ''}({total:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"small": args.small, "total_seconds": total, "ok": not failed, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(jsonable(doc), indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
