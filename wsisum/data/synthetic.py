"""Synthetic cohorts in the contract layout, realistic enough that summarization is a real problem.

Why synthetic: real patch features and slide embeddings are large, licensed and not redistributable;
tests, demos and scale benchmarks need a cohort anyone can regenerate bit for bit from a seed.

What makes it realistic (and summarization non-trivial):
- tissue is a spatially coherent blob (or 1-3 pieces) on a patch grid, coords are level-0 pixels;
- background morphologies form coherent regions (argmax of smoothed random fields);
- the label lives in a lesion that can be tiny (CAMELYON-like ITC: 1-5 patches of thousands),
  moderately different (BRCA-like IDC/ILC) or graded and subtle (BRACS-like);
- each morphology is a Gaussian in a latent space mapped to features by one fixed nonlinear map,
  plus per-case effects (stain shift, morphology drift) and LayerNorm-like rows, as CONCH features;
- slide-level "teacher" embeddings (TITAN/CHIEF/PRISM/GIGAPATH dims and norms) are different fixed
  random functions of the slide content plus noise: informative about the label, never perfect.

Every random draw is seeded: the atlas (prototypes, projections, teachers) from `seed`, cohort
plans from (seed, dataset), case effects from (seed, dataset, case), each slide from
(seed, dataset, slide index). So a resumed or reordered run writes identical arrays.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import shutil
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from wsisum.data.atomic import atomic_path, remove_stale_temps
from wsisum.data.bags import write_bag
from wsisum.data.embeddings import write_embedding
from wsisum.errors import InputError
from wsisum.progress import item_bar

GENERATOR = "wsisum.data.synthetic"
GENERATOR_VERSION = 1
MANIFEST_NAME = "cohort.json"
# Written first and kept: marks the directory as ours, so a resume can check preset/seed before
# cohort.json exists and `overwrite` never deletes a cohort that some other tool wrote.
MARKER_NAME = ".wsisum-synth.json"
LAYOUT_DIRS = ("h5_files", "slide_embeddings", "labels", "splits")

BACKGROUND_MORPHOLOGIES = (
    "stroma",
    "adipose",
    "normal_epithelium",
    "lymphocytes",
    "necrosis",
    "blood",
    "background",
    "lymph_node",
)
KINDS = ("camelyon", "brca", "bracs")
CAMELYON_CLASSES = ("negative", "itc", "micro", "macro")
BRCA_CLASSES = ("IDC", "ILC")
BRACS_NAMES = ("N", "PB", "UDH", "FEA", "ADH", "DCIS", "IC")  # BRACS order, benign -> invasive
FEATURE_DTYPES = ("float16", "float32")
N_PATCHES_DISTS = ("uniform", "loguniform", "logspace")
_CHUNK = 8192  # patches per feature chunk: bounds memory on 100k-patch slides (fixed: it is in the RNG path)
_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structure for ndimage.label

_KIND_KEYS = {
    "camelyon": {
        "itc_patches",
        "itc_purity",
        "micro_fraction",
        "micro_min_patches",
        "macro_fraction",
        "macro_min_patches",
    },
    "brca": {"tumour_fraction", "tumour_regions", "mixed_probability", "mixed_fraction"},
    "bracs": {"n_classes", "lesion_fraction", "lesion_regions"},
}
_COMMON_DATASET_KEYS = {
    "kind",
    "task",
    "prefix",
    "n_slides",
    "n_patches",
    "n_patches_dist",
    "background",
    "class_fractions",
}


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (Python's `hash()` of a str is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, *parts: str | int) -> np.random.Generator:
    """A generator for one named stream, e.g. (seed, dataset, slide index)."""
    words = [seed] + [p if isinstance(p, int) else stable_hash(p) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))


# ----------------------------------------------------------------------------------------------
# Preset validation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    dim: int
    norm: float


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str
    task: str
    prefix: str
    n_slides: int
    n_patches: tuple[int, int]
    n_patches_dist: str
    background: dict[str, float]
    classes: tuple[str, ...]
    class_fractions: tuple[float, ...]
    lesion: dict[str, Any]  # kind-specific keys of `_KIND_KEYS`, validated

    @property
    def lesion_morphologies(self) -> tuple[str, ...]:
        if self.kind == "camelyon":
            return ("metastasis",)
        if self.kind == "brca":
            return ("idc", "ilc")
        return tuple(f"lesion_{c}" for c in self.classes)


@dataclass(frozen=True)
class Preset:
    name: str
    feature_dim: int
    feature_dtype: str
    latent_dim: int
    patch_size: int
    level0_magnification: float
    target_magnification: float
    n_folds: int
    val_fraction: float
    paired_case_fraction: float
    morphology: dict[str, float]
    features: dict[str, float]
    tissue: dict[str, Any]
    teacher_hidden: int
    teacher_noise: float
    teacher_output_noise: float
    teacher_norm_jitter: float
    teachers: tuple[TeacherSpec, ...]
    datasets: tuple[DatasetSpec, ...]

    @property
    def patch_size_level0(self) -> int:
        """Grid stride in level-0 pixels (512 for 256-px patches at 20x on a 40x scan)."""
        return int(round(self.patch_size * self.level0_magnification / self.target_magnification))


class _Section:
    """Reads one mapping of the preset; every key is checked, so a typo fails naming its dotted path."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise InputError(None, f"preset{where} must be a mapping, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.used: set[str] = set()

    def _bad(self, key: str, problem: str) -> InputError:
        return InputError(None, f"preset{self.where}.{key}: {problem}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise InputError(None, f"preset{self.where}.{key} is missing")
        self.used.add(key)
        return self.data[key]

    def number(self, key: str, lo: float | None = None, hi: float | None = None, *, integer: bool = False):
        v = self.get(key)
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
            raise self._bad(key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self._bad(key, f"{v!r} is outside [{lo}, {hi if hi is not None else 'inf'}]")
        return int(v) if integer else float(v)

    def pair(self, key: str, lo: float, hi: float | None = None, *, integer: bool = False) -> tuple:
        v = self.get(key)
        if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 2:
            raise self._bad(key, f"expected [low, high], got {v!r}")
        sub = _Section({"low": v[0], "high": v[1]}, f"{self.where}.{key}")
        a, b = sub.number("low", lo, hi, integer=integer), sub.number("high", lo, hi, integer=integer)
        if a > b:
            raise self._bad(key, f"low {a} > high {b}")
        return (a, b)

    def choice(self, key: str, choices: Sequence[str]) -> str:
        v = self.get(key)
        if v not in choices:
            raise self._bad(key, f"{v!r} is not one of {list(choices)}")
        return str(v)

    def text(self, key: str, pattern_ok: Callable[[str], bool] = lambda s: True) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v or not pattern_ok(v):
            raise self._bad(key, f"expected a non-empty name of letters, digits, '_' or '-', got {v!r}")
        return v

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise InputError(None, f"preset{self.where}: unknown key(s) {unknown}")


def _is_name(s: str) -> bool:
    return all(ch.isalnum() or ch in "_-" for ch in s)


def bracs_class_names(n_classes: int) -> tuple[str, ...]:
    """BRACS-like class names: an evenly spaced subset of the 7 BRACS classes, benign -> invasive.

    5 -> N, UDH, FEA, DCIS, IC; 7 -> all of BRACS; more than 7 -> G0..G{K-1}.
    """
    if n_classes > len(BRACS_NAMES):
        return tuple(f"G{k}" for k in range(n_classes))
    picks = np.floor(np.linspace(0, len(BRACS_NAMES) - 1, n_classes) + 0.5).astype(int)
    return tuple(BRACS_NAMES[i] for i in picks)


def _class_fractions(sec: _Section, classes: tuple[str, ...]) -> tuple[float, ...]:
    """Weights given as a mapping {class: w} or a list in class order; normalised to sum 1."""
    raw = sec.get("class_fractions")
    if isinstance(raw, Mapping):
        if set(raw) != set(classes):
            raise sec._bad("class_fractions", f"keys {sorted(raw)} must be exactly the classes {list(classes)}")
        raw = [raw[c] for c in classes]
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != len(classes):
        raise sec._bad("class_fractions", f"need {len(classes)} weights for classes {list(classes)}")
    sub = _Section({c: w for c, w in zip(classes, raw)}, f"{sec.where}.class_fractions")
    w = np.array([sub.number(c, 0.0) for c in classes])
    if w.sum() <= 0:
        raise sec._bad("class_fractions", "weights sum to 0")
    return tuple(float(x) for x in w / w.sum())


def _lesion_params(sec: _Section, kind: str) -> dict[str, Any]:
    if kind == "camelyon":
        p = {
            "itc_patches": sec.pair("itc_patches", 1, integer=True),
            "itc_purity": sec.pair("itc_purity", 0.0, 1.0),
            "micro_fraction": sec.pair("micro_fraction", 1e-6, 1.0),
            "micro_min_patches": sec.number("micro_min_patches", 1, integer=True),
            "macro_fraction": sec.pair("macro_fraction", 1e-6, 0.9),
            "macro_min_patches": sec.number("macro_min_patches", 1, integer=True),
        }
        if p["micro_min_patches"] <= p["itc_patches"][1]:
            raise sec._bad("micro_min_patches", "must exceed itc_patches high (micro is larger than ITC)")
        if p["macro_min_patches"] <= p["micro_min_patches"]:
            raise sec._bad("macro_min_patches", "must exceed micro_min_patches (macro is larger than micro)")
        if p["macro_fraction"][0] < p["micro_fraction"][1]:
            raise sec._bad("macro_fraction", "low must be >= micro_fraction high")
        return p
    if kind == "brca":
        return {
            "tumour_fraction": sec.pair("tumour_fraction", 0.0, 0.9),
            "tumour_regions": sec.pair("tumour_regions", 1, integer=True),
            "mixed_probability": sec.number("mixed_probability", 0.0, 1.0),
            "mixed_fraction": sec.pair("mixed_fraction", 0.0, 0.5),
        }
    return {
        "lesion_fraction": sec.pair("lesion_fraction", 0.0, 0.9),
        "lesion_regions": sec.pair("lesion_regions", 1, integer=True),
    }


def _dataset(name: str, data: Any) -> DatasetSpec:
    if not isinstance(name, str) or not name or not _is_name(name):
        raise InputError(None, f"preset.datasets: bad dataset name {name!r}")
    sec = _Section(data, f".datasets.{name}")
    kind = sec.choice("kind", KINDS)
    allowed = _COMMON_DATASET_KEYS | _KIND_KEYS[kind]
    unknown = sorted(set(sec.data) - allowed)
    if unknown:
        raise InputError(None, f"preset.datasets.{name}: unknown key(s) {unknown} for kind '{kind}'")
    if kind == "bracs":
        classes = bracs_class_names(sec.number("n_classes", 2, 50, integer=True))
    else:
        classes = CAMELYON_CLASSES if kind == "camelyon" else BRCA_CLASSES
    background = sec.section("background")
    weights = {}
    for m in list(background.data):
        if m not in BACKGROUND_MORPHOLOGIES:
            raise background._bad(m, f"unknown morphology; choose from {list(BACKGROUND_MORPHOLOGIES)}")
        weights[m] = background.number(m, 0.0)
    if not weights or sum(weights.values()) <= 0:
        raise sec._bad("background", "needs at least one morphology with weight > 0")
    n_slides = sec.number("n_slides", 2, integer=True)
    spec = DatasetSpec(
        name=name,
        kind=kind,
        task=sec.text("task", _is_name),
        prefix=sec.text("prefix", _is_name),
        n_slides=n_slides,
        n_patches=sec.pair("n_patches", 1, integer=True),
        n_patches_dist=sec.choice("n_patches_dist", N_PATCHES_DISTS),
        background=weights,
        classes=classes,
        class_fractions=_class_fractions(sec, classes),
        lesion=_lesion_params(sec, kind),
    )
    sec.done()
    return spec


def parse_preset(preset: Mapping[str, Any]) -> Preset:
    """Validate a preset mapping (one `configs/preset/*.yaml`); raises InputError on the first problem."""
    sec = _Section(preset, "")
    morph, feats, tissue = sec.section("morphology"), sec.section("features"), sec.section("tissue")
    teachers_sec = sec.section("teachers")
    teachers = []
    for t in teachers_sec.data:
        tsec = teachers_sec.section(t)
        if not _is_name(str(t)):
            raise teachers_sec._bad(str(t), "teacher names use letters, digits, '_' or '-'")
        teachers.append(TeacherSpec(str(t), tsec.number("dim", 1, integer=True), tsec.number("norm", 1e-6)))
        tsec.done()
    n_folds = sec.number("n_folds", 2, integer=True)
    ds_sec = sec.section("datasets")
    datasets = tuple(_dataset(n, ds_sec.get(n)) for n in list(ds_sec.data))
    if not datasets:
        raise InputError(None, "preset.datasets: needs at least one dataset")
    p = Preset(
        name=sec.text("name", _is_name),
        feature_dim=sec.number("feature_dim", 2, integer=True),
        feature_dtype=sec.choice("feature_dtype", FEATURE_DTYPES),
        latent_dim=sec.number("latent_dim", 2, integer=True),
        patch_size=sec.number("patch_size", 1, integer=True),
        level0_magnification=sec.number("level0_magnification", 1e-3),
        target_magnification=sec.number("target_magnification", 1e-3),
        n_folds=n_folds,
        val_fraction=sec.number("val_fraction", 0.0, 0.9),
        paired_case_fraction=sec.number("paired_case_fraction", 0.0, 1.0),
        morphology={
            "separation": morph.number("separation", 0.0),
            "rank": morph.number("rank", 0, integer=True),
            "factor_scale": morph.number("factor_scale", 0.0),
            "diag_scale": morph.number("diag_scale", 1e-6),
            "slide_jitter": morph.number("slide_jitter", 0.0),
            "subtype_separation": morph.number("subtype_separation", 0.0),
            "grade_step": morph.number("grade_step", 0.0),
            "lesion_jitter": morph.number("lesion_jitter", 0.0),
        },
        features={
            "nonlinear_weight": feats.number("nonlinear_weight", 0.0),
            "noise": feats.number("noise", 0.0),
            "stain_shift": feats.number("stain_shift", 0.0),
        },
        tissue={
            "fill_fraction": tissue.number("fill_fraction", 0.05, 0.95),
            "pieces": tissue.pair("pieces", 1, 10, integer=True),
            "roughness": tissue.number("roughness", 0.0),
            "roughness_scale": tissue.number("roughness_scale", 0.0),
            "region_sigma": tissue.pair("region_sigma", 0.0),
            "composition_concentration": tissue.number("composition_concentration", 1e-3),
            "lesion_irregularity": tissue.number("lesion_irregularity", 0.0),
        },
        teacher_hidden=sec.number("teacher_hidden", 1, integer=True),
        teacher_noise=sec.number("teacher_noise", 0.0),
        teacher_output_noise=sec.number("teacher_output_noise", 0.0),
        teacher_norm_jitter=sec.number("teacher_norm_jitter", 0.0, 0.5),
        teachers=tuple(teachers),
        datasets=datasets,
    )
    for s in (morph, feats, tissue, teachers_sec, sec):
        s.done()
    if p.morphology["rank"] > p.latent_dim:
        raise InputError(None, "preset.morphology.rank: must be <= latent_dim")
    _check_cross_dataset(p)
    return p


def _check_cross_dataset(p: Preset) -> None:
    """Names that must be unique across the cohort, and fold counts the case counts can carry."""
    for attr in ("task", "prefix"):
        values = [getattr(d, attr) for d in p.datasets]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise InputError(None, f"preset.datasets: {attr} {dup} used by more than one dataset")
    bracs = {d.classes for d in p.datasets if d.kind == "bracs"}
    if len(bracs) > 1:
        raise InputError(None, "preset.datasets: all bracs-kind datasets must have the same n_classes")
    for d in p.datasets:
        n_cases = d.n_slides - _n_paired(d.n_slides, p.paired_case_fraction)
        if n_cases < p.n_folds:
            raise InputError(None, f"preset.datasets.{d.name}: {n_cases} cases cannot fill {p.n_folds} folds")


# ----------------------------------------------------------------------------------------------
# Cohort plan: labels, cases and slide sizes (cheap; decided before any slide is drawn)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlidePlan:
    dataset: str
    index: int
    slide_id: str
    case_id: str
    case_index: int
    label: str
    label_index: int
    n_patches: int


def _n_paired(n_slides: int, fraction: float) -> int:
    """Cases with 2 slides such that they are `fraction` of all cases."""
    return min(n_slides // 2, int(round(fraction * n_slides / (1.0 + fraction))))


def _largest_remainder(fractions: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to `total` closest to `fractions * total` (Hamilton apportionment)."""
    raw = np.asarray(fractions) * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _draw_sizes(spec: DatasetSpec, rng: np.random.Generator) -> np.ndarray:
    lo, hi = spec.n_patches
    n = spec.n_slides
    if spec.n_patches_dist == "uniform":
        return rng.integers(lo, hi + 1, size=n)
    if spec.n_patches_dist == "loguniform":
        return np.round(np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))).astype(int)
    # logspace: both ends present (e.g. the 100k-patch slide of the `large` benchmark), random order
    return rng.permutation(np.round(np.geomspace(lo, hi, n)).astype(int))


def plan_dataset(spec: DatasetSpec, preset: Preset, seed: int) -> list[SlidePlan]:
    """Labels, case grouping and slide sizes of one dataset, from (seed, dataset) only.

    Labels are assigned to cases (patients); ~`paired_case_fraction` of cases get 2 slides with the
    same label, so splits must be made per case.
    """
    rng = _rng(seed, spec.name, "plan")
    n_pairs = _n_paired(spec.n_slides, preset.paired_case_fraction)
    n_cases = spec.n_slides - n_pairs
    case_labels = rng.permutation(
        np.repeat(np.arange(len(spec.classes)), _largest_remainder(spec.class_fractions, n_cases))
    )
    per_case = np.ones(n_cases, dtype=int)
    per_case[rng.choice(n_cases, size=n_pairs, replace=False)] = 2
    sizes = _draw_sizes(spec, rng)
    width = max(4, len(str(spec.n_slides)))
    plans, i = [], 0
    for c in range(n_cases):
        for _ in range(per_case[c]):
            lab = int(case_labels[c])
            plans.append(
                SlidePlan(
                    dataset=spec.name,
                    index=i,
                    slide_id=f"SYN-{spec.prefix}-{i + 1:0{width}d}",
                    case_id=f"SYN-{spec.prefix}-P{c + 1:0{width}d}",
                    case_index=c,
                    label=spec.classes[lab],
                    label_index=lab,
                    n_patches=int(sizes[i]),
                )
            )
            i += 1
    return plans


def make_splits(
    plans: Sequence[SlidePlan], n_folds: int, val_fraction: float, rng: np.random.Generator
) -> list[dict[str, list[str]]]:
    """Case-level stratified k-fold: test = fold k, val = `val_fraction` of the rest per class.

    Cases are dealt round-robin per class (shuffled), so every class is in every test fold when it
    has at least `n_folds` cases; a case's slides always land in the same partition.
    """
    case_label = {p.case_index: p.label_index for p in plans}
    fold_of: dict[int, int] = {}
    offset = 0
    for lab in sorted(set(case_label.values())):
        cases = rng.permutation([c for c, y in case_label.items() if y == lab])
        for j, c in enumerate(cases):
            fold_of[int(c)] = (offset + j) % n_folds
        offset += len(cases)  # continue the deal where the last class stopped: balanced fold sizes
    out = []
    for k in range(n_folds):
        test = {c for c, f in fold_of.items() if f == k}
        val: set[int] = set()
        for lab in sorted(set(case_label.values())):
            rest = rng.permutation(sorted(c for c, y in case_label.items() if y == lab and c not in test))
            n_val = int(round(val_fraction * len(rest)))
            if n_val == 0 and val_fraction > 0 and len(rest) >= 3:
                n_val = 1
            val.update(int(c) for c in rest[:n_val])
        part = {"train": [], "val": [], "test": []}
        for p in plans:
            name = "test" if p.case_index in test else "val" if p.case_index in val else "train"
            part[name].append(p.slide_id)
        out.append(part)
    return out


# ----------------------------------------------------------------------------------------------
# Atlas: morphology prototypes, the latent -> feature map, teachers (all from the global seed)
# ----------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    spec: TeacherSpec
    part_weights: list[np.ndarray]  # one (H, p_k) block per content part
    hidden_bias: np.ndarray
    out: np.ndarray  # (D_t, H)
    out_bias: np.ndarray  # (D_t,)


@dataclass
class Atlas:
    names: tuple[str, ...]
    background: tuple[str, ...]
    means: np.ndarray  # (M, L)
    factors: np.ndarray  # (M, L, r) low-rank covariance factors
    diags: np.ndarray  # (M, L) diagonal std
    proj: np.ndarray  # (L, D) linear part
    nl_proj: np.ndarray  # (L, D) inside the tanh
    nl_bias: np.ndarray  # (D,)
    gamma: np.ndarray  # (D,) LayerNorm scale
    beta: np.ndarray  # (D,) LayerNorm shift
    latent_scale: float  # typical latent norm; scales the lesion part of teacher inputs to O(1) entries
    teachers: list[Teacher]

    def index(self, name: str) -> int:
        return self.names.index(name)


def morphology_names(preset: Preset) -> tuple[str, ...]:
    """Background vocabulary then every dataset's lesion morphologies, first-seen order."""
    names = list(BACKGROUND_MORPHOLOGIES)
    for d in preset.datasets:
        names += [m for m in d.lesion_morphologies if m not in names]
    return tuple(names)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _prototype(seed: int, name: str, preset: Preset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, low-rank factor and diagonal of one morphology; seeded by its name, so it does not
    change when datasets are added to a preset."""
    m, L = preset.morphology, preset.latent_dim
    rng = _rng(seed, "morphology", name)
    mean = m["separation"] * rng.standard_normal(L)
    factors = m["factor_scale"] * rng.standard_normal((L, m["rank"])) / math.sqrt(max(m["rank"], 1))
    diag = m["diag_scale"] * np.exp(0.25 * rng.standard_normal(L))
    return mean, factors, diag


def _structured_means(seed: int, preset: Preset, names: Sequence[str], means: np.ndarray) -> None:
    """Lesion means with controlled geometry: ILC at `subtype_separation` from IDC; BRACS-like grades
    on a slightly bent path from normal epithelium, `grade_step` apart (smaller than the per-patch
    spread, so a single patch barely tells neighbouring grades apart)."""
    m = preset.morphology
    rng = _rng(seed, "morphology", "geometry")
    d_sub, u, w = (_unit(rng.standard_normal(preset.latent_dim)) for _ in range(3))
    w = _unit(w - (w @ u) * u)
    if "ilc" in names:
        means[names.index("ilc")] = means[names.index("idc")] + m["subtype_separation"] * d_sub
    grades = [n for n in names if n.startswith("lesion_")]
    start = means[names.index("normal_epithelium")]
    for k, n in enumerate(grades):
        t = k / max(len(grades) - 1, 1)
        bend = 0.5 * m["grade_step"] * math.sin(math.pi * t)
        means[names.index(n)] = start + (k + 1) * m["grade_step"] * u + bend * w


def _teacher(seed: int, spec: TeacherSpec, part_dims: Sequence[int], hidden: int) -> Teacher:
    """A fixed random 2-layer tanh MLP; each teacher weighs the content parts differently."""
    rng = _rng(seed, "teacher", spec.name)
    gains = np.asarray(_PART_GAINS) * np.exp(0.3 * rng.standard_normal(len(part_dims)))
    blocks = [g * rng.standard_normal((hidden, p)) / math.sqrt(p) for g, p in zip(gains, part_dims)]
    return Teacher(
        spec=spec,
        part_weights=blocks,
        hidden_bias=0.3 * rng.standard_normal(hidden),
        out=rng.standard_normal((spec.dim, hidden)) / math.sqrt(hidden),
        out_bias=0.5 * rng.standard_normal(spec.dim),
    )


def build_atlas(preset: Preset, seed: int) -> Atlas:
    """Everything shared by all slides; depends on (preset, seed) only."""
    names = morphology_names(preset)
    L, D = preset.latent_dim, preset.feature_dim
    protos = [_prototype(seed, n, preset) for n in names]
    means = np.stack([p[0] for p in protos])
    _structured_means(seed, preset, names, means)
    rng = _rng(seed, "projection")
    proj = rng.standard_normal((L, D)) / math.sqrt(L)
    nl_proj = 1.5 * rng.standard_normal((L, D)) / math.sqrt(L)
    nl_bias = 0.5 * rng.standard_normal(D)
    gamma = 1.0 + 0.1 * rng.standard_normal(D)
    beta = 0.05 * rng.standard_normal(D)
    m = preset.morphology
    latent_scale = math.sqrt(L * (m["separation"] ** 2 + m["diag_scale"] ** 2 + m["factor_scale"] ** 2)) + 1e-6
    part_dims = _content_dims(preset)
    teachers = [_teacher(seed, t, part_dims, preset.teacher_hidden) for t in preset.teachers]
    return Atlas(
        names=names,
        background=BACKGROUND_MORPHOLOGIES,
        means=means,
        factors=np.stack([p[1] for p in protos]),
        diags=np.stack([p[2] for p in protos]),
        proj=proj.astype(np.float32),
        nl_proj=nl_proj.astype(np.float32),
        nl_bias=nl_bias.astype(np.float32),
        gamma=gamma.astype(np.float32),
        beta=beta.astype(np.float32),
        latent_scale=latent_scale,
        teachers=teachers,
    )


# ----------------------------------------------------------------------------------------------
# One slide: tissue grid, morphology regions, lesion, latents, features, teacher embeddings
# ----------------------------------------------------------------------------------------------


def _standardized_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smoothed white noise with zero mean and unit std (smoothing shrinks the std with sigma)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return (f - f.mean()) / max(float(f.std()), 1e-12)


def tissue_mask(n: int, tissue: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """A (H, W) grid with exactly `n` tissue cells: 1-3 radial blobs roughened by smooth noise whose
    scale follows the blob radius, so small and 100k-patch slides look alike (no swiss cheese)."""
    area = n / tissue["fill_fraction"]
    lo, hi = tissue["pieces"]
    k = int(rng.integers(lo, hi + 1))
    aspect = k * rng.uniform(1.0, 1.5)  # pieces sit side by side along the long axis
    h = int(math.ceil(math.sqrt(area / aspect))) + 2
    w = int(math.ceil(math.sqrt(area * aspect))) + 2
    yy, xx = np.mgrid[0:h, 0:w]
    shares = rng.dirichlet(np.full(k, 4.0))
    falloff = np.full((h, w), -np.inf)
    for j in range(k):
        cx = (j + 0.5 + rng.uniform(-0.15, 0.15)) * w / k
        cy = h / 2 + rng.uniform(-0.1, 0.1) * h
        radius = math.sqrt(shares[j] * n / math.pi) + 1.0
        stretch = rng.uniform(0.7, 1.4)
        dist = np.hypot((xx - cx) / stretch, (yy - cy) * stretch)
        falloff = np.maximum(falloff, 1.0 - dist / radius)
    sigma = max(1.0, tissue["roughness_scale"] * math.sqrt(n / k / math.pi))
    field = falloff + tissue["roughness"] * _standardized_field((h, w), sigma, rng)
    top = np.argpartition(-field.ravel(), n - 1)[:n]
    mask = np.zeros(h * w, dtype=bool)
    mask[top] = True
    return mask.reshape(h, w)


def background_map(
    mask: np.ndarray, weights: Mapping[str, float], atlas: Atlas, tissue: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """Global morphology index of each tissue cell (row-major): argmax of per-morphology smooth
    fields plus log per-slide weights, so regions are coherent and the mix varies per slide."""
    names = list(weights)
    base = np.array([weights[n] for n in names], dtype=float)
    present = base > 0
    alpha = tissue["composition_concentration"] * base[present] / base[present].sum()
    w = np.zeros(len(names))
    w[present] = rng.dirichlet(alpha)
    sigma = rng.uniform(*tissue["region_sigma"])
    scores = np.stack([_standardized_field(mask.shape, sigma, rng)[mask] for _ in names])
    scores += np.log(w + 1e-12)[:, None]
    ids = np.array([atlas.index(n) for n in names])
    return ids[np.argmax(scores, axis=0)]


def grow_region(available: np.ndarray, k: int, irregularity: float, rng: np.random.Generator) -> np.ndarray:
    """`k` 8-connected cells of `available` (H, W) grown from a random seed cell: best-first on
    distance + smooth noise, so the result is one contiguous lesion with an irregular border.

    Hand-written because scipy/skimage have no priority flood fill with a size stop.
    Returns flat grid indices (fewer than `k` only if no component is that large).
    """
    h, w = available.shape
    labels, n_comp = ndimage.label(available, structure=_EIGHT)
    if n_comp == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    sizes = np.bincount(labels.ravel())[1:]
    k = min(k, int(sizes.max()))
    eligible = np.flatnonzero(np.isin(labels.ravel(), np.flatnonzero(sizes >= k) + 1))
    start = int(eligible[rng.integers(len(eligible))])
    sr, sc = divmod(start, w)
    radius = math.sqrt(k / math.pi)
    noise = _standardized_field((h, w), max(1.0, radius / 2), rng)
    yy, xx = np.mgrid[0:h, 0:w]
    prio = (np.hypot(yy - sr, xx - sc) + irregularity * max(radius, 1.0) * noise).ravel()
    avail = available.ravel()
    seen = np.zeros(h * w, dtype=bool)
    seen[start] = True
    heap = [(prio[start], start)]
    out: list[int] = []
    while heap and len(out) < k:
        _, cell = heapq.heappop(heap)
        out.append(cell)
        r, c = divmod(cell, w)
        for dr, dc in _NEIGHBOURS_8:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w:
                nb = rr * w + cc
                if avail[nb] and not seen[nb]:
                    seen[nb] = True
                    heapq.heappush(heap, (prio[nb], nb))
    return np.asarray(out, dtype=np.int64)


@dataclass
class Lesion:
    cells: np.ndarray  # patch indices
    morphology: int  # global morphology index
    purity: np.ndarray | None = None  # per-cell tumour share (ITC), None = pure


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def camelyon_lesion_size(label: str, n: int, p: Mapping[str, Any], rng: np.random.Generator) -> int:
    """Lesion patches by class: 0, ITC 1-5, micro small (>= micro_min), macro large (>= macro_min)."""
    if label == "negative":
        return 0
    if label == "itc":
        return int(rng.integers(p["itc_patches"][0], p["itc_patches"][1] + 1))
    key = "micro" if label == "micro" else "macro"
    k = max(p[f"{key}_min_patches"], int(round(_loguniform(rng, *p[f"{key}_fraction"]) * n)))
    return min(k, n - 1)


def _regions(
    grid_index: np.ndarray, taken: np.ndarray, total: int, n_regions: int, irregularity: float, rng
) -> list[np.ndarray]:
    """`total` cells split over `n_regions` contiguous regions on free tissue; marks them taken."""
    sizes = _largest_remainder(rng.dirichlet(np.full(n_regions, 2.0)), total)
    out = []
    for k in sizes[sizes > 0]:
        cells = grow_region((grid_index >= 0) & ~taken, int(k), irregularity, rng)
        taken.ravel()[cells] = True
        out.append(grid_index.ravel()[cells])
    return out


def place_lesions(
    plan: SlidePlan, spec: DatasetSpec, grid_index: np.ndarray, atlas: Atlas, tissue: Mapping[str, Any], rng
) -> list[Lesion]:
    """The label-carrying regions of one slide."""
    n, p, irr = plan.n_patches, spec.lesion, tissue["lesion_irregularity"]
    taken = np.zeros(grid_index.shape, dtype=bool)
    if spec.kind == "camelyon":
        k = camelyon_lesion_size(plan.label, n, p, rng)
        if k == 0:
            return []
        cells = grid_index.ravel()[grow_region(grid_index >= 0, k, irr, rng)]
        purity = rng.uniform(*p["itc_purity"], size=len(cells)) if plan.label == "itc" else None
        return [Lesion(cells, atlas.index("metastasis"), purity)]
    if spec.kind == "brca":
        main, other = ("idc", "ilc") if plan.label == "IDC" else ("ilc", "idc")
        total = max(1, int(round(rng.uniform(*p["tumour_fraction"]) * n)))
        n_reg = int(rng.integers(p["tumour_regions"][0], p["tumour_regions"][1] + 1))
        out = [Lesion(c, atlas.index(main)) for c in _regions(grid_index, taken, total, n_reg, irr, rng)]
        if rng.random() < p["mixed_probability"]:
            k = max(1, int(round(rng.uniform(*p["mixed_fraction"]) * n)))
            out += [Lesion(c, atlas.index(other)) for c in _regions(grid_index, taken, k, 1, irr, rng)]
        return out
    total = max(1, int(round(rng.uniform(*p["lesion_fraction"]) * n)))
    n_reg = int(rng.integers(p["lesion_regions"][0], p["lesion_regions"][1] + 1))
    m = atlas.index(f"lesion_{plan.label}")
    return [Lesion(c, m) for c in _regions(grid_index, taken, total, n_reg, irr, rng)]


@dataclass
class CaseEffects:
    """What the slides of one patient share (so case-level splits matter): stain and biology drift."""

    stain: np.ndarray  # (D,) shift before LayerNorm
    drift: np.ndarray  # (M, L) per-morphology mean shift
    lesion: np.ndarray  # (L,) extra shift of lesion means (within-class spread of tumours)


def case_effects(plan: SlidePlan, preset: Preset, atlas: Atlas, seed: int) -> CaseEffects:
    rng = _rng(seed, plan.dataset, "case", plan.case_index)
    m = preset.morphology
    return CaseEffects(
        stain=(preset.features["stain_shift"] * rng.standard_normal(preset.feature_dim)).astype(np.float32),
        drift=m["slide_jitter"] * rng.standard_normal(atlas.means.shape),
        lesion=m["lesion_jitter"] * rng.standard_normal(preset.latent_dim),
    )


def draw_latents(morph: np.ndarray, means: np.ndarray, atlas: Atlas, rng: np.random.Generator) -> np.ndarray:
    """Per-patch latents: Gaussian per morphology with low-rank + diagonal covariance."""
    z = np.empty((len(morph), atlas.means.shape[1]))
    for m in np.unique(morph):
        idx = np.flatnonzero(morph == m)
        e1 = rng.standard_normal((len(idx), atlas.factors.shape[2]))
        e2 = rng.standard_normal((len(idx), atlas.means.shape[1]))
        z[idx] = means[m] + e1 @ atlas.factors[m].T + e2 * atlas.diags[m]
    return z


def latents_to_features(
    z: np.ndarray, atlas: Atlas, preset: Preset, stain: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Features in the output dtype, plus their float64 mean (for teachers); chunked so a 100k x 768
    slide needs one output array, not several float32/float64 copies."""
    f = preset.features
    out = np.empty((len(z), preset.feature_dim), dtype=preset.feature_dtype)
    total = np.zeros(preset.feature_dim)
    for s in range(0, len(z), _CHUNK):
        zc = z[s : s + _CHUNK].astype(np.float32)
        x = zc @ atlas.proj + f["nonlinear_weight"] * np.tanh(zc @ atlas.nl_proj + atlas.nl_bias)
        x += f["noise"] * rng.standard_normal(x.shape, dtype=np.float32) + stain
        # LayerNorm-like rows, as the last layer of CONCH-style encoders leaves them
        x -= x.mean(axis=1, keepdims=True)
        x /= np.sqrt(x.var(axis=1, keepdims=True) + 1e-6)
        x = x * atlas.gamma + atlas.beta
        total += x.sum(axis=0, dtype=np.float64)
        out[s : s + len(x)] = x
    return out, total / len(z)


# Typical weight of each content part in a teacher (composition, lesion fraction, lesion latent, mean
# feature); every teacher jitters these, so teachers differ in what they are good at.
_PART_GAINS = (0.7, 1.0, 1.5, 0.7)


def _content_dims(preset: Preset) -> list[int]:
    return [len(BACKGROUND_MORPHOLOGIES), 1, preset.latent_dim, preset.feature_dim]


def slide_content(
    morph: np.ndarray, lesion_mask: np.ndarray, z: np.ndarray, mean_feature: np.ndarray, atlas: Atlas
) -> list[np.ndarray]:
    """What teachers see, in parts with entries of order 1: sqrt background composition, log lesion
    fraction, lesion mean latent (scaled by sqrt(frac): small lesions still move it a little), mean
    feature. Lesion morphologies are pooled into one fraction so the class is not a free one-hot."""
    n_bg = len(atlas.background)
    counts = np.bincount(morph[~lesion_mask], minlength=len(atlas.names))[:n_bg]
    frac = float(lesion_mask.mean())
    lesion_part = np.zeros(z.shape[1])
    if lesion_mask.any():
        per_dim = atlas.latent_scale / math.sqrt(z.shape[1])
        lesion_part = z[lesion_mask].mean(axis=0) / per_dim * math.sqrt(frac)
    return [
        np.sqrt(counts / len(morph) * n_bg),
        np.array([math.log1p(frac / 1e-2) / math.log1p(1e2)]),
        lesion_part,
        mean_feature,
    ]


def teacher_embedding(
    teacher: Teacher, content: Sequence[np.ndarray], preset: Preset, rng: np.random.Generator
) -> np.ndarray:
    """Fixed MLP of the content, rescaled to the teacher's norm. Noise enters the hidden layer (a
    teacher's errors are semantic, shared by all its dims, so a probe cannot average them away) and,
    a little, the output."""
    pre = teacher.hidden_bias + sum(wk @ ck for wk, ck in zip(teacher.part_weights, content))
    pre = pre + preset.teacher_noise * rng.standard_normal(len(pre))
    signal = teacher.out @ np.tanh(pre)
    rms = float(np.sqrt(np.mean(signal**2)))
    e = signal + teacher.out_bias + preset.teacher_output_noise * rms * rng.standard_normal(len(signal))
    target = teacher.spec.norm * (1.0 + preset.teacher_norm_jitter * rng.standard_normal())
    return (e * target / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)


@dataclass
class Slide:
    plan: SlidePlan
    features: np.ndarray
    coords: np.ndarray
    morphology: np.ndarray
    n_lesion: int
    embeddings: dict[str, np.ndarray]


def build_slide(plan: SlidePlan, spec: DatasetSpec, preset: Preset, atlas: Atlas, seed: int) -> Slide:
    """Draw one slide from its own seed (seed, dataset, index): identical whatever the run order."""
    rng = _rng(seed, plan.dataset, plan.index)
    mask = tissue_mask(plan.n_patches, preset.tissue, rng)
    grid_index = np.full(mask.shape, -1, dtype=np.int64)
    grid_index[mask] = np.arange(plan.n_patches)
    rows, cols = np.nonzero(mask)  # row-major, matching grid_index order
    coords = np.stack([cols, rows], axis=1).astype(np.int64) * preset.patch_size_level0  # (x, y)
    bg = background_map(mask, spec.background, atlas, preset.tissue, rng)
    lesions = place_lesions(plan, spec, grid_index, atlas, preset.tissue, rng)
    case = case_effects(plan, preset, atlas, seed)
    means = atlas.means + case.drift
    for name in spec.lesion_morphologies:  # per-case lesion shift: the within-class spread of tumours
        means[atlas.index(name)] += case.lesion
    z = draw_latents(bg, means, atlas, rng)
    morph = bg.copy()
    for les in lesions:
        tumour = draw_latents(np.full(len(les.cells), les.morphology), means, atlas, rng)
        if les.purity is not None:  # ITC: a few tumour cells inside otherwise normal node tissue
            a = les.purity[:, None]
            tumour = a * tumour + (1 - a) * z[les.cells]
        z[les.cells] = tumour
        morph[les.cells] = les.morphology
    lesion_mask = np.zeros(plan.n_patches, dtype=bool)
    for les in lesions:
        lesion_mask[les.cells] = True
    features, mean_feature = latents_to_features(
        z, atlas, preset, case.stain, _rng(seed, plan.dataset, plan.index, "noise")
    )
    content = slide_content(morph, lesion_mask, z, mean_feature, atlas)
    embeddings = {
        t.spec.name: teacher_embedding(t, content, preset, _rng(seed, plan.dataset, plan.index, "teacher", t.spec.name))
        for t in atlas.teachers
    }
    return Slide(plan, features, coords, morph.astype(np.int16), int(lesion_mask.sum()), embeddings)


# ----------------------------------------------------------------------------------------------
# Writing, resume and the manifest
# ----------------------------------------------------------------------------------------------


def bag_path(out_dir: Path, plan: SlidePlan) -> Path:
    return out_dir / "h5_files" / plan.dataset / f"{plan.slide_id}.h5"


def embedding_path(out_dir: Path, plan: SlidePlan, teacher: str) -> Path:
    return out_dir / "slide_embeddings" / plan.dataset / teacher / f"{plan.slide_id}.h5"


def _write_slide(out_dir: Path, slide: Slide, spec: DatasetSpec, preset: Preset, atlas: Atlas, seed: int) -> None:
    """Write the bag and teacher files that are missing (each atomically)."""
    plan = slide.plan
    bp = bag_path(out_dir, plan)
    if not bp.exists():
        attrs = {
            "slide_id": plan.slide_id,
            "case_id": plan.case_id,
            "dataset": plan.dataset,
            "task": spec.task,
            "label": plan.label,
            "label_index": plan.label_index,
            "n_lesion_patches": slide.n_lesion,
            "lesion_fraction": slide.n_lesion / plan.n_patches,
            "morphology_names": json.dumps(list(atlas.names)),
            "generator": GENERATOR,
            "generator_version": GENERATOR_VERSION,
            "preset": preset.name,
            "seed": seed,
        }
        coords_attrs = {
            "patch_size": preset.patch_size,
            "patch_size_level0": preset.patch_size_level0,
            "patch_level": 0,
            "level0_magnification": preset.level0_magnification,
            "target_magnification": preset.target_magnification,
            "overlap": 0,
        }
        write_bag(
            bp,
            slide.features,
            slide.coords,
            attrs=attrs,
            coords_attrs=coords_attrs,
            extras={"morphology": slide.morphology},
        )
    for name, emb in slide.embeddings.items():
        ep = embedding_path(out_dir, plan, name)
        if not ep.exists():
            write_embedding(ep, emb, attrs={"slide_id": plan.slide_id, "teacher": name, "generator": GENERATOR})


def _write_csv(path: Path, df: pd.DataFrame, *, index: bool) -> None:
    if path.exists():
        return
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def write_labels_and_splits(
    out_dir: Path, spec: DatasetSpec, plans: list[SlidePlan], preset: Preset, seed: int
) -> None:
    labels = pd.DataFrame(
        {
            "slide_id": [p.slide_id for p in plans],
            "label": [p.label for p in plans],
            "case_id": [p.case_id for p in plans],
        }
    )
    _write_csv(out_dir / "labels" / f"{spec.task}.csv", labels, index=False)
    folds = make_splits(plans, preset.n_folds, preset.val_fraction, _rng(seed, spec.task, "splits"))
    for k, parts in enumerate(folds):
        # Columns of different lengths: concat pads with NaN, written as empty cells (CLAM layout)
        df = pd.concat([pd.Series(parts[c], name=c, dtype=object) for c in ("train", "val", "test")], axis=1)
        _write_csv(out_dir / "splits" / spec.task / f"splits_{k}.csv", df, index=True)


def expected_files(out_dir: Path, preset: Preset, plans: Mapping[str, list[SlidePlan]]) -> list[Path]:
    """Every file a complete cohort has (cohort.json aside)."""
    files = []
    for spec in preset.datasets:
        for p in plans[spec.name]:
            files.append(bag_path(out_dir, p))
            files += [embedding_path(out_dir, p, t.name) for t in preset.teachers]
        files.append(out_dir / "labels" / f"{spec.task}.csv")
        files += [out_dir / "splits" / spec.task / f"splits_{k}.csv" for k in range(preset.n_folds)]
    return files


def _package_version() -> str:
    import wsisum

    return str(getattr(wsisum, "__version__", "unknown"))


def build_manifest(preset_raw: dict, preset: Preset, seed: int, plans: Mapping[str, list[SlidePlan]]) -> dict:
    names = morphology_names(preset)
    per_ds = {}
    for spec in preset.datasets:
        ps = plans[spec.name]
        per_ds[spec.name] = {
            "slides": len(ps),
            "cases": len({p.case_id for p in ps}),
            "patches": int(sum(p.n_patches for p in ps)),
            "classes": {c: sum(p.label == c for p in ps) for c in spec.classes},
        }
    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "version": _package_version(),
        "preset_name": preset.name,
        "preset": preset_raw,
        "seed": seed,
        "feature_dim": preset.feature_dim,
        "feature_dtype": preset.feature_dtype,
        "patch_size": preset.patch_size,
        "patch_size_level0": preset.patch_size_level0,
        "morphologies": list(names),
        "datasets": {s.name: [p.slide_id for p in plans[s.name]] for s in preset.datasets},
        "dataset_tasks": {s.name: s.task for s in preset.datasets},
        "tasks": {s.task: list(s.classes) for s in preset.datasets},
        "task_kinds": {s.task: s.kind for s in preset.datasets},
        "lesion_morphologies": {s.task: list(s.lesion_morphologies) for s in preset.datasets},
        "teachers": {t.name: t.dim for t in preset.teachers},
        "teacher_norms": {t.name: t.norm for t in preset.teachers},
        "n_folds": preset.n_folds,
        "counts": {
            "slides": sum(d["slides"] for d in per_ds.values()),
            "cases": sum(d["cases"] for d in per_ds.values()),
            "patches": sum(d["patches"] for d in per_ds.values()),
            "datasets": per_ds,
        },
        "complete": True,
    }


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable ({err}); delete it or choose a fresh out_dir") from None
    if not isinstance(obj, dict):
        raise InputError(path, "is not a wsisum-synth manifest; choose a fresh out_dir")
    return obj


def _identity(preset_raw: dict, seed: int) -> dict:
    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "preset": preset_raw, "seed": seed}


def _same_run(meta: Mapping[str, Any], preset_raw: dict, seed: int) -> bool:
    return all(meta.get(k) == v for k, v in _identity(preset_raw, seed).items())


def _describe(meta: Mapping[str, Any]) -> str:
    preset = meta.get("preset")
    name = preset.get("name", "?") if isinstance(preset, Mapping) else "?"
    return f"preset '{name}' seed {meta.get('seed', '?')} (generator v{meta.get('generator_version', '?')})"


def _mismatch(meta: Mapping[str, Any], preset_raw: dict, seed: int) -> str:
    """One line naming what differs, including a same-named preset whose values were edited."""
    new = _describe(_identity(preset_raw, seed))
    old = _describe(meta)
    if old == new:
        before = meta.get("preset") if isinstance(meta.get("preset"), Mapping) else {}
        keys = sorted(k for k in set(preset_raw) | set(before) if preset_raw.get(k) != before.get(k))
        return f"holds a cohort of {old} with other preset values ({', '.join(keys)})"
    return f"holds a cohort of {old}, not {new}"


def _has_layout(out_dir: Path) -> bool:
    return any((out_dir / d).exists() and any((out_dir / d).iterdir()) for d in LAYOUT_DIRS)


def _clear(out_dir: Path) -> None:
    """Delete only what this generator writes; anything else in out_dir stays."""
    for d in LAYOUT_DIRS:
        shutil.rmtree(out_dir / d, ignore_errors=True)
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    (out_dir / MARKER_NAME).unlink(missing_ok=True)


def _prepare_dir(out_dir: Path, preset_raw: dict, seed: int, overwrite: bool) -> dict | None:
    """Decide between skip (returns the manifest), resume, overwrite and refusal."""
    manifest_path, marker_path = out_dir / MANIFEST_NAME, out_dir / MARKER_NAME
    meta = _read_json(manifest_path) or _read_json(marker_path)
    if meta is None and _has_layout(out_dir):
        raise InputError(
            out_dir, "holds cohort files not written by wsisum-synth (no cohort.json); choose a fresh out_dir"
        )
    if meta is not None and meta.get("generator") != GENERATOR:
        raise InputError(manifest_path, "is not a wsisum-synth manifest; choose a fresh out_dir")
    if overwrite:
        _clear(out_dir)
        return None
    if meta is not None and not _same_run(meta, preset_raw, seed):
        raise InputError(out_dir, f"{_mismatch(meta, preset_raw, seed)}; pass overwrite=true or choose a fresh out_dir")
    manifest = _read_json(manifest_path)
    return manifest if manifest is not None and manifest.get("complete") is True else None


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """The shared bar (slides done, rate, ETA), labelled with the dataset being written."""
    with item_bar(total, "slides", enabled=enabled) as advance:
        yield lambda desc: advance(description=desc)


def _plain_preset(preset: Any) -> dict:
    """The preset as plain JSON types (a DictConfig is accepted too), so it compares and stores."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(preset, DictConfig):
            preset = OmegaConf.to_container(preset, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(preset, Mapping):
        raise InputError(None, f"preset must be a mapping, got {type(preset).__name__}")
    try:
        return json.loads(json.dumps(preset))
    except (TypeError, ValueError) as err:
        raise InputError(None, f"preset holds a value that is not plain YAML data: {err}") from None


def generate_cohort(
    out_dir: str | Path, preset: Mapping[str, Any], *, seed: int = 0, overwrite: bool = False, progress: bool = True
) -> dict:
    """Write (or resume, or skip) a synthetic cohort under `out_dir`; returns the manifest.

    Files already present are complete (atomic writes) and skipped; cohort.json is written last and
    marks completion. A directory holding another preset/seed is refused unless `overwrite`.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(None, f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    preset_raw = _plain_preset(preset)
    spec = parse_preset(preset_raw)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    remove_stale_temps(out_dir)
    plans = {d.name: plan_dataset(d, spec, seed) for d in spec.datasets}
    done = _prepare_dir(out_dir, preset_raw, seed, overwrite)
    if done is not None and all(p.exists() for p in expected_files(out_dir, spec, plans)):
        return done
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete from here until the end
    _write_json(out_dir / MARKER_NAME, _identity(preset_raw, seed))
    atlas = build_atlas(spec, seed)
    total = sum(len(v) for v in plans.values())
    with _progress(total, progress) as advance:
        for d in spec.datasets:
            for plan in plans[d.name]:
                missing = not bag_path(out_dir, plan).exists() or any(
                    not embedding_path(out_dir, plan, t.name).exists() for t in spec.teachers
                )
                if missing:
                    _write_slide(out_dir, build_slide(plan, d, spec, atlas, seed), d, spec, atlas, seed)
                advance(d.name)
    for d in spec.datasets:
        write_labels_and_splits(out_dir, d, plans[d.name], spec, seed)
    manifest = build_manifest(preset_raw, spec, seed, plans)
    _write_json(out_dir / MANIFEST_NAME, manifest)
    return json.loads(json.dumps(manifest))
