"""Summary search speed: the original's one-candidate-per-forward loop versus batched scoring,
and the default selection (`guided`) versus that loop.

    python scripts/bench_summarize.py [--models small base] [--candidates 1024] [--ckpt CKPT]
    python scripts/bench_summarize.py --selection-only --models base --candidates 1000
    python scripts/bench_summarize.py --large     # + slides/s and peak memory end to end on `large`

Selection: on a clustered 500-patch pool with a 3-patch rare cluster, the original loop (one full
MAE forward per random candidate, M candidates) and `sampler=wsisum_search`'s guided selection are
scored by the same objective (teacher cosine + pool coverage); printed: seconds per slide, the
speed-up, and the best score each reaches.

For each model, the same pool (500 patches, D=768) and the same M candidate subsets (63 patches)
are scored three ways: (a) reference-style, as the original code: one candidate per forward through
the whole masked autoencoder (encoder + decoder over the 500-token pool); (b) one candidate per
forward, encoder only; (c) batched, encoder only (what `sampler=wsisum_search` does). The best score must be
identical. Without --ckpt the weights are a fresh initialisation: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from wsisum.data.ground_truth import MANIFEST_NAME
from wsisum.lit.pretrain import SummarizerPretraining
from wsisum.memory import peak_rss_mb
from wsisum.run_layout import last_checkpoint
from wsisum.sampling.facility import cosine_matrix
from wsisum.sampling.stratified import quota_size
from wsisum.summarize.scorer import CandidateScorer, load_summarizer, random_candidates
from wsisum.summarize.selection import SummaryObjective, guided_search, random_completions

REPO = Path(__file__).resolve().parents[1]
TEACHERS = {"TITAN": 768, "CHIEF": 768, "PRISM": 1280}


def build(model: str, ckpt: str | None, device: torch.device) -> SummarizerPretraining:
    if ckpt:
        return load_summarizer(ckpt, device)
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / f"{model}.yaml"))
    torch.manual_seed(0)
    return SummarizerPretraining(768, TEACHERS, model=cfg).to(device).eval()


def reference_scores(module: SummarizerPretraining, scorer: CandidateScorer, cands: np.ndarray) -> np.ndarray:
    """The original's loop: per candidate, a full MAE forward over the pool with that visible mask."""
    n = scorer.feats.shape[0]
    mask = torch.ones(1, n, dtype=torch.bool, device=scorer.device)
    out = []
    with torch.inference_mode():
        for c in cands:
            vis = torch.zeros(1, n, dtype=torch.bool, device=scorer.device)
            vis[0, torch.from_numpy(c)] = True
            o = module.model(scorer.feats[None], mask, scorer.pos[None], vis, reconstruct=True)
            out.append(float(module.teacher_cosine(o["distill"], scorer.targets)[0]))
    return np.array(out)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return res, time.perf_counter() - t0


def bench_model(model: str, args, device: torch.device) -> None:
    module = build(model, args.ckpt, device)
    g = torch.Generator().manual_seed(0)
    feats, pos = torch.randn(args.pool, 768, generator=g), torch.rand(args.pool, 2, generator=g) * 40
    scorer = CandidateScorer(module, feats, pos, device)
    scorer.set_teacher_target(
        {t: np.random.default_rng(1).normal(size=d).astype(np.float32) for t, d in TEACHERS.items()}
    )
    cands = random_candidates(np.random.default_rng(0), args.candidates, args.pool, args.keep)
    ref, t_ref = timed(lambda: reference_scores(module, scorer, cands))
    single, t_single = timed(lambda: np.concatenate([scorer(torch.from_numpy(c[None])).numpy() for c in cands]))
    batched, t_batch = timed(
        lambda: np.concatenate(
            [scorer(torch.from_numpy(cands[i : i + args.batch])).numpy() for i in range(0, len(cands), args.batch)]
        )
    )
    same = int(np.argmax(ref)) == int(np.argmax(single)) == int(np.argmax(batched))
    print(
        f"\nmodel={model}  M={args.candidates} candidates of {args.keep}/{args.pool}  device={device}  threads={torch.get_num_threads()}"
    )
    print(f"{'scoring':<46}{'seconds':>9}{'cand/s':>10}{'vs (a)':>9}   best score")
    for name, t, s in (
        ("(a) reference: 1 per forward, full MAE", t_ref, ref),
        ("(b) 1 per forward, encoder only", t_single, single),
        (f"(c) batched x{args.batch}, encoder only", t_batch, batched),
    ):
        print(f"{name:<46}{t:>9.2f}{len(cands) / t:>10.1f}{t_ref / t:>8.1f}x   {s.max():.6f}")
    print(f"same best candidate in all three: {same}; max |score difference| {np.abs(ref - batched).max():.2e}")


def clustered_pool(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A pool with a few big morphologies and one 3-patch rare cluster (a slide, not white noise)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.0, (6, dim))
    labels = rng.choice(5, n, p=[0.4, 0.25, 0.15, 0.12, 0.08])
    labels[:3] = 5
    return torch.from_numpy((means[labels] + rng.normal(0, 0.5, (n, dim))).astype(np.float32))


def bench_selection(model: str, args, device: torch.device) -> None:
    module = build(model, args.ckpt, device)
    feats, pos = (
        clustered_pool(args.pool, 768),
        torch.rand(args.pool, 2, generator=torch.Generator().manual_seed(0)) * 40,
    )
    scorer = CandidateScorer(module, feats, pos, device)
    scorer.set_teacher_target(
        {t: np.random.default_rng(1).normal(size=d).astype(np.float32) for t, d in TEACHERS.items()}
    )
    sim = cosine_matrix(feats.numpy())
    coverage = SummaryObjective(sim, None, teacher_weight=0.0)  # the patch-level term, for the reference
    cfg = OmegaConf.load(REPO / "configs" / "sampler" / "wsisum.yaml")
    n_quota = quota_size(args.keep, float(cfg.summary_quota), int(cfg.composition_patches))
    quota = np.arange(n_quota)  # stands in for the rare order's prefix
    cands = random_completions(np.random.default_rng(0), args.candidates, args.pool, quota, args.keep)
    teacher, t_ref = timed(lambda: reference_scores(module, scorer, cands))  # the original's cost
    cover = coverage(cands)
    print(f"\nselection, model={model}, {args.keep} of {args.pool}, device={device}, threads={torch.get_num_threads()}")
    print(f"{'method':<62}{'s/slide':>9}{'speed-up':>10}{'candidates':>12}   best score")
    # the default's objective, then (if the default leaves it out) the one with the teacher term on
    for weight in dict.fromkeys([float(cfg.teacher_weight), 1.0]):
        ref = weight * teacher + float(cfg.coverage_weight) * cover
        objective = SummaryObjective(sim, scorer, weight, float(cfg.coverage_weight))  # uniform pool weights
        res, t_new = timed(
            lambda objective=objective: guided_search(
                objective,
                sim,
                args.keep,
                quota,
                np.random.default_rng(0),
                int(cfg.n_random),
                int(cfg.refine_rounds),
                int(cfg.refine_batch),
            )
        )
        print(f"objective: {weight:g} x teacher cosine + {float(cfg.coverage_weight):g} x coverage")
        print(
            f"{'  original loop: 1 full-MAE forward per random candidate':<62}{t_ref:>9.2f}{1.0:>9.1f}x"
            f"{len(cands):>12}   {ref.max():.4f}"
        )
        print(
            f"{'  guided: quota + facility location + swaps (batched)':<62}{t_new:>9.3f}{t_ref / t_new:>9.1f}x"
            f"{res['n_scored']:>12}   {res['score']:.4f}"
        )
        print(f"  guided >= original best: {res['score'] >= ref.max()}")


def bench_large(args) -> None:
    """End to end on the `large` preset: pool k-means + search per slide, with its peak memory."""
    from wsisum.apps._app import compose_app_config
    from wsisum.apps.train import train
    from wsisum.data.cohort import Cohort
    from wsisum.data.synthetic import generate_cohort
    from wsisum.data.synthetic.preset import load_preset
    from wsisum.summarize.run import summarize_cohort
    from wsisum.summarize.search import WSISumSampler

    root = Path(args.large_root)
    if not (root / MANIFEST_NAME).exists():
        preset = load_preset("large")
        generate_cohort(root, preset, seed=0)
    out = REPO / "outputs" / "bench" / "large_train"
    ckpt = last_checkpoint(out)
    if not ckpt.exists():
        cfg = compose_app_config(
            "train",
            [
                f"data.root={root}",
                "model=small",
                "trainer.max_epochs=1",
                "val_fraction=0.34",
                f"pool.cache_dir={out}/cache",
            ],
            out,
        )
        train(cfg)
    cohort = Cohort(root)
    sampler = WSISumSampler(str(ckpt), n_candidates=args.candidates)
    t0 = time.perf_counter()
    report = summarize_cohort(
        cohort, sampler, 63, REPO / "outputs" / "bench" / "large_summaries", overwrite=True, progress=False
    )
    dt = time.perf_counter() - t0
    rss = peak_rss_mb()
    print(
        f"\nlarge preset: {len(report.done)} slides in {dt:.1f}s = {len(report.done) / dt:.2f} slides/s, "
        f"peak RSS {rss:.0f} MB (one process, model=small, M={args.candidates})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["small", "base"], help="none with --large: only the end-to-end run")
    ap.add_argument("--candidates", type=int, default=1024)
    ap.add_argument("--pool", type=int, default=500)
    ap.add_argument("--keep", type=int, default=63)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--selection-only", action="store_true", help="only the guided-selection comparison")
    ap.add_argument("--large-root", default=str(REPO / "outputs" / "cohorts" / "large"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for model in args.models:
        if not args.selection_only:
            bench_model(model, args, device)
        bench_selection(model, args, device)
    if args.large:
        bench_large(args)


if __name__ == "__main__":
    main()
