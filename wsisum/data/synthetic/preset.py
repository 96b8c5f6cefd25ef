"""Preset validation: a YAML mapping in, a frozen `Preset` out, or one InputError line naming the key.

Hand-written rather than an OmegaConf structured config, because OmegaConf would change what is
accepted and what the user reads: it converts "5" to an int and 5 to a str, accepts "inf"; its
errors span several lines and say "Key 'x' not in 'P'" / "missing mandatory value" instead of
`preset.<dotted.key>: ...`; it has no ranges, no kind-dependent key sets and no union of a mapping
and a list (`class_fractions`), so all of those would still be checked by hand afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.ground_truth import BACKGROUND_MORPHOLOGIES
from wsisum.data.synthetic.plan import n_paired_cases
from wsisum.data.synthetic.spec import (
    BRCA_CLASSES,
    CAMELYON_CLASSES,
    FEATURE_DTYPES,
    KINDS,
    N_PATCHES_DISTS,
    PAM50_CLASSES,
    DatasetSpec,
    Preset,
    TeacherSpec,
    bracs_class_names,
)
from wsisum.data.synthetic.worlds import parse_artifacts, parse_sites, parse_teacher_parts
from wsisum.errors import InputError

# configs/preset/<name>.yaml is a preset; what presets share is under base/ and is not a preset itself
PRESET_DIR = Path(__file__).resolve().parents[2] / "configs" / "preset"
BASE_DIR = "configs/preset/base/"
MISSING = "???"  # OmegaConf's mark of a value the base leaves to each preset

KIND_KEYS = {
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
    "pam50": {"tumour_fraction", "tumour_regions", "subtype_shift"},
}
COMMON_DATASET_KEYS = {
    "kind",
    "task",
    "prefix",
    "n_slides",
    "n_patches",
    "n_patches_dist",
    "background",
    "class_fractions",
}


class _Section:
    """Reads one mapping of the preset; every key is checked, so a typo fails naming its dotted path."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise InputError(None, f"preset{where} must be a mapping, got {type(data).__name__}")
        self.data = dict(data)
        self.where = where
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> InputError:
        return InputError(None, f"preset{self.where}.{key}: {problem}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise InputError(None, f"preset{self.where}.{key} is missing")
        if self.data[key] == MISSING:
            raise self.error(key, f"not set ({MISSING} in {BASE_DIR}, what presets share): the preset must set it")
        self.used.add(key)
        return self.data[key]

    def number(self, key: str, lo: float | None = None, hi: float | None = None, *, integer: bool = False):
        v = self.get(key)
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
            raise self.error(key, f"expected {'an integer' if integer else 'a number'}, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(key, f"{v!r} is outside [{lo}, {hi if hi is not None else 'inf'}]")
        return int(v) if integer else float(v)

    def pair(self, key: str, lo: float, hi: float | None = None, *, integer: bool = False) -> tuple:
        v = self.get(key)
        if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 2:
            raise self.error(key, f"expected [low, high], got {v!r}")
        sub = _Section({"low": v[0], "high": v[1]}, f"{self.where}.{key}")
        a, b = sub.number("low", lo, hi, integer=integer), sub.number("high", lo, hi, integer=integer)
        if a > b:
            raise self.error(key, f"low {a} > high {b}")
        return (a, b)

    def choice(self, key: str, choices: Sequence[str]) -> str:
        v = self.get(key)
        if v not in choices:
            raise self.error(key, f"{v!r} is not one of {list(choices)}")
        return str(v)

    def text(self, key: str, pattern_ok: Callable[[str], bool] = lambda s: True) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v or not pattern_ok(v):
            raise self.error(key, f"expected a non-empty name of letters, digits, '_' or '-', got {v!r}")
        return v

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise InputError(None, f"preset{self.where}: unknown key(s) {unknown}")


def _is_name(s: str) -> bool:
    return all(ch.isalnum() or ch in "_-" for ch in s)


def _class_fractions(sec: _Section, classes: tuple[str, ...]) -> tuple[float, ...]:
    """Weights given as a mapping {class: w} or a list in class order; normalised to sum 1."""
    raw = sec.get("class_fractions")
    if isinstance(raw, Mapping):
        if set(raw) != set(classes):
            raise sec.error("class_fractions", f"keys {sorted(raw)} must be exactly the classes {list(classes)}")
        raw = [raw[c] for c in classes]
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) != len(classes):
        raise sec.error("class_fractions", f"need {len(classes)} weights for classes {list(classes)}")
    sub = _Section({c: w for c, w in zip(classes, raw)}, f"{sec.where}.class_fractions")
    w = np.array([sub.number(c, 0.0) for c in classes])
    if w.sum() <= 0:
        raise sec.error("class_fractions", "weights sum to 0")
    return tuple(float(x) for x in w / w.sum())


def _lesion_params(sec: _Section, kind: str) -> dict[str, Any]:
    """The kind-specific lesion keys; the camelyon size classes must nest (ITC < micro < macro)."""
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
            raise sec.error("micro_min_patches", "must exceed itc_patches high (micro is larger than ITC)")
        if p["macro_min_patches"] <= p["micro_min_patches"]:
            raise sec.error("macro_min_patches", "must exceed micro_min_patches (macro is larger than micro)")
        if p["macro_fraction"][0] < p["micro_fraction"][1]:
            raise sec.error("macro_fraction", "low must be >= micro_fraction high")
        return p
    if kind == "brca":
        return {
            "tumour_fraction": sec.pair("tumour_fraction", 0.0, 0.9),
            "tumour_regions": sec.pair("tumour_regions", 1, integer=True),
            "mixed_probability": sec.number("mixed_probability", 0.0, 1.0),
            "mixed_fraction": sec.pair("mixed_fraction", 0.0, 0.5),
        }
    if kind == "pam50":
        return {
            "tumour_fraction": sec.pair("tumour_fraction", 0.0, 0.9),
            "tumour_regions": sec.pair("tumour_regions", 1, integer=True),
            "subtype_shift": sec.number("subtype_shift", 0.0),
        }
    return {
        "lesion_fraction": sec.pair("lesion_fraction", 0.0, 0.9),
        "lesion_regions": sec.pair("lesion_regions", 1, integer=True),
    }


def _background_weights(sec: _Section) -> dict[str, float]:
    """Morphology weights of the background; only known morphologies, at least one above 0."""
    background = sec.section("background")
    weights = {}
    for m in list(background.data):
        if m not in BACKGROUND_MORPHOLOGIES:
            raise background.error(m, f"unknown morphology; choose from {list(BACKGROUND_MORPHOLOGIES)}")
        weights[m] = background.number(m, 0.0)
    if not weights or sum(weights.values()) <= 0:
        raise sec.error("background", "needs at least one morphology with weight > 0")
    return weights


def _dataset(name: str, data: Any) -> DatasetSpec:
    """One dataset section; its allowed keys depend on its kind, so they are checked before values."""
    if not isinstance(name, str) or not name or not _is_name(name):
        raise InputError(None, f"preset.datasets: bad dataset name {name!r}")
    sec = _Section(data, f".datasets.{name}")
    kind = sec.choice("kind", KINDS)
    allowed = COMMON_DATASET_KEYS | KIND_KEYS[kind]
    unknown = sorted(set(sec.data) - allowed)
    if unknown:
        raise InputError(None, f"preset.datasets.{name}: unknown key(s) {unknown} for kind '{kind}'")
    if kind == "bracs":
        classes = bracs_class_names(sec.number("n_classes", 2, 50, integer=True))
    else:
        classes = {"camelyon": CAMELYON_CLASSES, "brca": BRCA_CLASSES, "pam50": PAM50_CLASSES}[kind]
    weights = _background_weights(sec)
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


def _teachers(teachers_sec: _Section) -> tuple[TeacherSpec, ...]:
    teachers = []
    for t in teachers_sec.data:
        tsec = teachers_sec.section(t)
        if not _is_name(str(t)):
            raise teachers_sec.error(str(t), "teacher names use letters, digits, '_' or '-'")
        teachers.append(TeacherSpec(str(t), tsec.number("dim", 1, integer=True), tsec.number("norm", 1e-6)))
        tsec.done()
    return tuple(teachers)


def _morphology(morph: _Section) -> dict[str, float]:
    return {
        "separation": morph.number("separation", 0.0),
        "rank": morph.number("rank", 0, integer=True),
        "factor_scale": morph.number("factor_scale", 0.0),
        "diag_scale": morph.number("diag_scale", 1e-6),
        "slide_jitter": morph.number("slide_jitter", 0.0),
        "subtype_separation": morph.number("subtype_separation", 0.0),
        "grade_step": morph.number("grade_step", 0.0),
        "lesion_jitter": morph.number("lesion_jitter", 0.0),
        "anchor_distance": morph.number("anchor_distance", 0.0),
        "lesion_tightness": morph.number("lesion_tightness", 1e-3, 10.0),
    }


def _features(feats: _Section) -> dict[str, float]:
    return {
        "nonlinear_weight": feats.number("nonlinear_weight", 0.0),
        "noise": feats.number("noise", 0.0),
        "stain_shift": feats.number("stain_shift", 0.0),
        "common_weight": feats.number("common_weight", 0.0),
    }


def _tissue(tissue: _Section) -> dict[str, Any]:
    return {
        "fill_fraction": tissue.number("fill_fraction", 0.05, 0.95),
        "pieces": tissue.pair("pieces", 1, 10, integer=True),
        "roughness": tissue.number("roughness", 0.0),
        "roughness_scale": tissue.number("roughness_scale", 0.0),
        "region_sigma": tissue.pair("region_sigma", 0.0),
        "composition_concentration": tissue.number("composition_concentration", 1e-3),
        "lesion_irregularity": tissue.number("lesion_irregularity", 0.0),
    }


def parse_preset(preset: Mapping[str, Any]) -> Preset:
    """Validate a preset mapping (one `configs/preset/*.yaml`); raises InputError on the first problem.

    The order of the checks below decides which problem is reported first; keep it.
    """
    sec = _Section(preset, "")
    if sec.data.get("name", MISSING) == MISSING:  # a part of base/ chosen as the preset, or a preset without a name
        raise InputError(None, f"preset.name is not set (a preset names itself; {BASE_DIR} holds what presets share)")
    morph, feats, tissue = sec.section("morphology"), sec.section("features"), sec.section("tissue")
    parts, artifacts, sites = sec.section("teacher_parts"), sec.section("artifacts"), sec.section("sites")
    teachers_sec = sec.section("teachers")
    teachers = _teachers(teachers_sec)
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
        morphology=_morphology(morph),
        features=_features(feats),
        tissue=_tissue(tissue),
        teacher_parts=parse_teacher_parts(parts),
        artifacts=parse_artifacts(artifacts),
        sites=parse_sites(sites),
        teacher_hidden=sec.number("teacher_hidden", 1, integer=True),
        teacher_noise=sec.number("teacher_noise", 0.0),
        teacher_output_noise=sec.number("teacher_output_noise", 0.0),
        teacher_norm_jitter=sec.number("teacher_norm_jitter", 0.0, 0.5),
        teachers=teachers,
        datasets=datasets,
    )
    for s in (morph, feats, tissue, parts, artifacts, sites, teachers_sec, sec):
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
        n_cases = d.n_slides - n_paired_cases(d.n_slides, p.paired_case_fraction)
        if n_cases < p.n_folds:
            raise InputError(None, f"preset.datasets.{d.name}: {n_cases} cases cannot fill {p.n_folds} folds")


def load_preset(name: str) -> dict[str, Any]:
    """The preset `configs/preset/<name>.yaml` composed with its `defaults` (the shared parts in
    base/) as `wsisum-synth preset=<name>` composes it, as plain data for `generate_cohort`.

    For scripts and tests: it resets Hydra's global state, so do not call it inside a Hydra app.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    if not (PRESET_DIR / f"{name}.yaml").is_file():
        raise InputError(PRESET_DIR / f"{name}.yaml", "no such preset")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(PRESET_DIR.parent), version_base="1.3"):
            cfg = compose(overrides=[f"+preset={name}"])
    except MissingConfigException as err:
        raise InputError(PRESET_DIR / f"{name}.yaml", str(err).splitlines()[0]) from None
    return OmegaConf.to_container(cfg.preset, resolve=True)
