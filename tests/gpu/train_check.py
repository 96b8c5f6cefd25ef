"""The bf16 training checks: AdamW steps of `SummarizerPretraining` under torch.autocast(bfloat16) on
one fixed batch, and the same module through a real `lightning.Trainer(precision="bf16-mixed")`."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from tests.gpu.common import Row, Sizes, all_finite, model_cfg, size_label, sync

LIGHTNING_STEPS = 2


def bf16_missing() -> str | None:
    """Why bf16 cannot run on the GPU here, or None when it can."""
    import torch

    return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(0)} has no bf16"


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


def dtype_name(dtypes: list) -> str | None:
    return str(dtypes[-1]).replace("torch.", "") if dtypes else None


def peak_mb(device: str) -> float:
    from wsisum.memory import peak_gpu_mb, peak_rss_mb

    return peak_gpu_mb() if device == "cuda" else peak_rss_mb()


def measure_train(sz: Sizes, device: str) -> Row:
    """One warm-up and `sz.steps` timed steps; samples/s, peak memory, the losses, the Linear's dtype."""
    import torch

    from wsisum.lit.pretrain import SummarizerPretraining
    from wsisum.memory import reset_peak_gpu

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
        reset_peak_gpu()
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
        "linear_dtype": dtype_name(dtypes),
        "steps": sz.steps,
    }
    trend = "decreasing" if fig["loss_decreasing"] else "NOT decreasing"
    key = (
        f"{fig['samples_per_s']:.1f} samples/s, peak {fig['peak_mb']:.0f} MB, "
        f"loss {losses[0]:.3f}->{losses[-1]:.3f} ({trend}), linear out {fig['linear_dtype']}"
    )
    return Row("train", device, size_label("train", device, sz), dt, key, figures=fig)


def train_problems(fig: dict[str, Any]) -> list[str]:
    """Finite losses and bf16 activations (whether the loss falls is printed, not required)."""
    bad = []
    if not all_finite(fig["losses"]):
        bad.append(f"non-finite loss {fig['losses']}")
    if fig["linear_dtype"] != "bfloat16":
        bad.append(f"autocast gave {fig['linear_dtype']}, not bfloat16")
    return bad


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


def measure_train_lightning(sz: Sizes, device: str) -> Row:
    """LIGHTNING_STEPS steps of `lightning.Trainer(precision="bf16-mixed")` over `collate_bags` batches."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from wsisum.data.datasets import collate_bags
    from wsisum.lit.pretrain import SummarizerPretraining

    torch.manual_seed(0)
    module = SummarizerPretraining(sz.dim, sz.teachers, model=model_cfg(sz.model), warmup_ratio=0.5)
    dtypes = watch_dtype(module)
    bags = Bags(sz.batch * LIGHTNING_STEPS, sz.pool, sz.dim, sz.teachers)
    loader = DataLoader(bags, sz.batch, collate_fn=collate_bags)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed",
            max_steps=LIGHTNING_STEPS,
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
        "linear_dtype": dtype_name(dtypes),
        "param_dtypes": param_dtypes,
        "param_device": str(next(module.parameters()).device),
    }
    key = (
        f"{fig['global_step']} steps on {fig['param_device']}, loss {loss:.3f}, "
        f"linear out {fig['linear_dtype']}, params {'/'.join(param_dtypes)}"
    )
    return Row("train-lightning", device, size_label("train-lightning", device, sz), dt, key, figures=fig)


def train_lightning_problems(fig: dict[str, Any]) -> list[str]:
    """Every step ran, a finite loss, bf16 activations over float32 master weights."""
    bad = []
    if fig["global_step"] != LIGHTNING_STEPS:
        bad.append(f"ran {fig['global_step']} of {LIGHTNING_STEPS} steps")
    if not all_finite([fig["loss"]]):
        bad.append("loss not finite")
    if fig["linear_dtype"] != "bfloat16":
        bad.append(f"bf16-mixed gave {fig['linear_dtype']} activations")
    if fig["param_dtypes"] != ["float32"]:
        bad.append(f"parameters are {fig['param_dtypes']}, not float32 master weights")
    return bad
