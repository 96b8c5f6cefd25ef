"""Summarizer training speed: samples/s and peak memory, SDPA attention versus explicit softmax(QK^T)V.

    python scripts/bench_train.py [--model base] [--pool 500] [--batch 8] [--steps 5] [--dim 768]

Both variants share weights and inputs (random 500-patch pools, D=768 like CONCH, the 3 study
teachers); each runs a few optimizer steps after one warm-up step. On CUDA, a bf16 row is added.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from check_gpu import synthetic_batch  # scripts/ is on sys.path when a script runs
from omegaconf import OmegaConf

from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.memory import peak_gpu_mb, peak_rss_mb, reset_peak_gpu

REPO = Path(__file__).resolve().parents[1]
TEACHERS = {"TITAN": 768, "CHIEF": 768, "PRISM": 1280}


def peak_mb(device: torch.device) -> float:
    return peak_gpu_mb() if device.type == "cuda" else peak_rss_mb()


def run(model_cfg: dict, attention: str, args, device: torch.device, bf16: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    module = SummarizerPretraining(args.dim, TEACHERS, model=model_cfg | {"attention": attention}).to(device)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = synthetic_batch(args.batch, args.pool, args.dim, TEACHERS, str(device))
    if device.type == "cuda":
        reset_peak_gpu()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.step(data)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return args.steps * args.batch / dt, peak_mb(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / f"{args.model}.yaml"))
    variants = [("explicit softmax(QK^T)V", "explicit", False), ("scaled_dot_product_attention", "sdpa", False)]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        variants.append(("sdpa + bf16 autocast", "sdpa", True))
    rows = []
    for name, attention, bf16 in variants:  # a fresh process each, so peak memory is per variant
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            rows.append((name, *pool.submit(run, model_cfg, attention, args, device, bf16).result()))
    print(
        f"model={args.model} pool={args.pool} batch={args.batch} D={args.dim} device={device} threads={torch.get_num_threads()}"
    )
    print(f"{'attention':<32}{'samples/s':>11}{'peak MB':>10}{'speed-up':>10}")
    base = rows[0][1]
    for name, sps, mb in rows:
        print(f"{name:<32}{sps:>11.2f}{mb:>10.0f}{sps / base:>9.2f}x")
    print("peak MB: max RSS of the process (CPU) or max allocated (CUDA)")


if __name__ == "__main__":
    main()
