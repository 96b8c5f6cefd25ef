"""The Python API for notebooks: one slide's features in, its summary out, as the CLI makes it.

Samplers are built from the apps' own configs (`configs/sampler/<name>.yaml`, options merged over
them), so every sampler the CLI has is reachable here with no second registry, and
`summarize_slide(..., slide_id=s, seed=k)` returns the indices `wsisum-summarize seed=k` writes for slide
`s`. torch and hydra are imported inside the functions, so `import wsisum` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.bags import Bag
from wsisum.errors import InputError, budget_option, input_error_in
from wsisum.sampling.base import Sampler, Selection
from wsisum.summarize import writer

SAMPLER_CONFIGS = Path(__file__).resolve().parent / "configs" / "sampler"
POOL_CONFIG = SAMPLER_CONFIGS.parent / "pool" / "default.yaml"  # what a sampler config interpolates as ${pool.*}
MODEL_SCORING = {"teacher_weight": 1.0}  # a Summarizer loads a checkpoint to score with it: slide-level term on
SET_BY_SUMMARIZER = ("ckpt_path", "device", "target")


def sampler_names() -> list[str]:
    """The registered samplers: the `sampler` config group of the apps."""
    return sorted(p.stem for p in SAMPLER_CONFIGS.glob("*.yaml"))


def sampler_config(name: str) -> Any:
    """`configs/sampler/<name>.yaml` as Hydra composes it: the configs of its `defaults` list (siblings
    in the group, as a config extending `wsisum` lists it) merged first, then its own keys."""
    from omegaconf import OmegaConf

    path = SAMPLER_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise InputError(None, f"unknown sampler {name!r}; valid samplers: {', '.join(sampler_names())}")
    own = OmegaConf.load(path)
    parents = [sampler_config(str(entry)) for entry in own.pop("defaults", []) if str(entry) != "_self_"]
    return OmegaConf.merge(*parents, own)


def build_sampler(name: str, seed: int = 0, **options: Any) -> Sampler:
    """`configs/sampler/<name>.yaml` with `options` merged over it, instantiated as the apps do.
    `seed` and `pool` are the top-level keys the yamls interpolate (`seed: ${seed}`, `${pool.size}`)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    base = sampler_config(name)
    valid = [str(k) for k in base if k != "_target_"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(None, f"sampler={name} has no option {', '.join(unknown)}; valid options: {', '.join(valid)}")
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    root = {"seed": int(seed), "pool": OmegaConf.load(POOL_CONFIG), "sampler": base}
    cfg = OmegaConf.merge(root, {"sampler": plain})
    try:
        return instantiate(cfg.sampler)
    except InstantiationException as err:
        cause = input_error_in(err)
        if cause is None:
            raise
        raise cause from None


def as_array(values: Any) -> np.ndarray:
    """A numpy array from numpy or torch (duck-typed: torch is never imported for numpy input)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def as_features(features: Any) -> np.ndarray:
    """Features (N, D) checked as the bag readers check them: one line naming the problem."""
    feats = as_array(features)
    if feats.ndim != 2 or 0 in feats.shape:
        raise InputError(None, f"features must be a non-empty 2-D array (N patches, D), got shape {feats.shape}")
    if feats.dtype.kind not in "fiu":
        raise InputError(None, f"features have non-numeric dtype {feats.dtype}")
    if feats.dtype.kind == "f" and not np.isfinite(feats).all():
        raise InputError(None, "features have non-finite values (NaN/Inf)")
    return feats


def as_coords(coords: Any, n: int) -> np.ndarray | None:
    if coords is None:
        return None
    xy = as_array(coords)
    if xy.shape != (n, 2):
        raise InputError(None, f"coords must have shape ({n}, 2), one row per patch, got {xy.shape}")
    return xy


def select_with(
    sampler: Sampler, features: np.ndarray, coords: np.ndarray | None, budget: int | str, slide_id: str, **context: Any
) -> Selection:
    """One slide through a built sampler, as the CLI's slide job calls it."""
    budget = sampler.check_budget(budget_option(budget))
    try:
        return sampler.select(features, budget, slide_id=str(slide_id), coords=coords, **context)
    except InputError as err:
        if coords is None and "needs coords" in err.problem:  # the sampler's line speaks of a bag file
            raise InputError(None, f"sampler={sampler.name} needs coords=(N, 2) patch positions") from None
        raise


def summarize_slide(
    features: Any,
    coords: Any = None,
    budget: int | str = 64,
    sampler: str | Sampler = "kmeans",
    *,
    slide_id: str = "slide",
    seed: int = 0,
    **options: Any,
) -> Selection:
    """The summary of one slide: `budget` patches (or `"auto"`) chosen by a registered sampler.

    `options` are the sampler's config keys (e.g. `n_clusters=20`, `ckpt_path=...`); draws are seeded
    from (seed, slide_id) as in `wsisum-summarize`. A built `Sampler` is reused as it is.
    """
    if isinstance(sampler, Sampler):
        if options:
            raise InputError(None, f"options {sorted(options)} apply to a sampler name, not to a built sampler")
        built = sampler
    else:
        built = build_sampler(sampler, seed, **options)
    feats = as_features(features)
    return select_with(built, feats, as_coords(coords, len(feats)), budget, slide_id)


class Summarizer:
    """The search summary with the pretrained student scoring it (`sampler=wsisum_search`,
    `teacher_weight=1` unless given), its checkpoint loaded once for many slides. The default
    summary, `summarize_slide(..., sampler="wsisum")`, needs no checkpoint."""

    def __init__(self, module: Any, ckpt_path: str, device: str, seed: int = 0, options: dict | None = None):
        self.module, self.ckpt_path, self.device, self.seed = module, ckpt_path, device, int(seed)
        self.options = MODEL_SCORING | dict(options or {})
        self.samplers: dict[str, Sampler] = {}  # target (teacher | self) -> its sampler, built on first use

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", *, seed: int = 0, **options: Any) -> Summarizer:
        """Load a `wsisum-train` checkpoint (`device="auto"`: cuda when available, else cpu);
        `options` are `configs/sampler/wsisum_search.yaml` keys (default here: `teacher_weight=1`,
        where the CLI's `sampler=wsisum_search` has 0)."""
        from wsisum.summarize.scorer import load_summarizer, resolve_device

        clash = sorted(set(options) & set(SET_BY_SUMMARIZER))
        if clash:
            raise InputError(None, f"{', '.join(clash)}: set by from_checkpoint(path, device) and select(teachers=)")
        dev = resolve_device(device)
        module = load_summarizer(str(path), dev)  # the samplers find it in search's per-process cache
        return cls(module, str(path), str(dev), seed, options)

    @property
    def teacher_names(self) -> list[str]:
        return list(self.module.teacher_names)

    def sampler(self, target: str) -> Sampler:
        if target not in self.samplers:
            fixed = {"ckpt_path": self.ckpt_path, "device": self.device, "target": target}
            self.samplers[target] = build_sampler("wsisum_search", self.seed, **(self.options | fixed))
        return self.samplers[target]

    def select(
        self,
        features: Any,
        coords: Any = None,
        budget: int | str = 64,
        teachers: dict[str, Any] | None = None,
        *,
        slide_id: str = "slide",
    ) -> Selection:
        """One slide's summary. `teachers` (name -> slide embedding) scores subsets against them;
        without, against the model's own slide token on the pool (teacher-free)."""
        feats = as_features(features)
        context = {"teachers": self.teacher_embeddings(teachers)} if teachers else {}
        sampler = self.sampler("teacher" if teachers else "self")
        return select_with(sampler, feats, as_coords(coords, len(feats)), budget, slide_id, **context)

    def teacher_embeddings(self, teachers: dict[str, Any]) -> dict[str, np.ndarray | None]:
        unknown = sorted(set(teachers) - set(self.teacher_names))
        if unknown:
            raise InputError(
                None, f"unknown teacher(s) {', '.join(unknown)}; the checkpoint has {', '.join(self.teacher_names)}"
            )
        out: dict[str, np.ndarray | None] = {}
        for name, emb in teachers.items():
            vec = None if emb is None else as_array(emb).astype(np.float32)
            if vec is not None and vec.ndim == 2 and vec.shape[0] == 1:
                vec = vec[0]
            if vec is not None and vec.ndim != 1:
                raise InputError(None, f"teacher {name}: embedding must have shape (D,) or (1, D), got {vec.shape}")
            out[name] = vec
        return out


def write_summary(
    path: str | Path,
    bag_or_features: Bag | Any,
    selection: Selection,
    coords: Any = None,
    *,
    sampler: str | Sampler,
    budget: int | str,
    seed: int = 0,
    source: str | None = None,
) -> Path:
    """Write a summary bag in the schema `wsisum-summarize` writes (features, coords, indices, recipe
    attrs), so tools reading CLI summaries read it too. A built `Sampler` records its whole recipe."""
    if isinstance(bag_or_features, Bag):
        bag = bag_or_features
        if coords is not None:
            bag = Bag(bag.features, as_coords(coords, bag.n_patches), bag.attrs, bag.coords_attrs, path=bag.path)
    else:
        feats = as_features(bag_or_features)
        bag = Bag(feats, as_coords(coords, len(feats)))
    idx = np.asarray(selection.indices)
    if idx.size and (idx.min() < 0 or idx.max() >= bag.n_patches):
        raise InputError(path, f"selection indices do not fit a bag of {bag.n_patches} patches (another slide's?)")
    budget = budget_option(budget)
    if isinstance(sampler, Sampler):
        recipe = sampler.recipe(budget)
    else:
        recipe = {"sampler": str(sampler), "budget": budget, "seed": int(seed)}
    return writer.write_summary(path, bag, selection, recipe, source or bag.path or "in-memory")
