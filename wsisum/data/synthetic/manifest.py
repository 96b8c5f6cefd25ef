"""The manifest (cohort.json) and the marker, and what they decide: skip, resume, overwrite or refuse.

The marker is written before the first slide and the manifest after the last, so a directory tells
which preset and seed it holds at any point, and a resume never mixes two cohorts.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsisum.data.ground_truth import MANIFEST_LESIONS, MANIFEST_MORPHOLOGIES, MANIFEST_NAME
from wsisum.data.markers import changed_keys, read_marker, write_marker
from wsisum.data.synthetic.layout import GENERATOR, GENERATOR_VERSION, LAYOUT_DIRS, MARKER_NAME
from wsisum.data.synthetic.plan import SlidePlan
from wsisum.data.synthetic.spec import Preset, artifact_names, morphology_names
from wsisum.errors import InputError
from wsisum.version import __version__

ARTIFACTS_KEY = "artifact_morphologies"  # in cohort.json when the cohort has artifacts


def build_manifest(preset_raw: dict, preset: Preset, seed: int, plans: Mapping[str, list[SlidePlan]]) -> dict:
    """What readers of the cohort need without opening a bag: ids, tasks, classes, teachers, counts."""
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
    out = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "version": __version__,
        "preset_name": preset.name,
        "preset": preset_raw,
        "seed": seed,
        "feature_dim": preset.feature_dim,
        "feature_dtype": preset.feature_dtype,
        "patch_size": preset.patch_size,
        "patch_size_level0": preset.patch_size_level0,
        MANIFEST_MORPHOLOGIES: list(names),
        "datasets": {s.name: [p.slide_id for p in plans[s.name]] for s in preset.datasets},
        "dataset_tasks": {s.name: s.task for s in preset.datasets},
        "tasks": {s.task: list(s.classes) for s in preset.datasets},
        "task_kinds": {s.task: s.kind for s in preset.datasets},
        MANIFEST_LESIONS: {s.task: list(s.lesion_morphologies) for s in preset.datasets},
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
    if artifact_names(preset):  # never lesions: readers of per-patch truth leave them out
        out[ARTIFACTS_KEY] = list(artifact_names(preset))
    return out


def write_json(path: Path, obj: dict) -> None:
    """The marker or manifest, pretty-printed; atomic, so a crash never leaves a half-written one."""
    write_marker(path, obj, indent=2)


def _read_json(path: Path) -> dict | None:
    """The marker or manifest, None when absent; a damaged one is an error, never silently replaced."""
    return read_marker(path, fix="delete it or choose a fresh out_dir", kind="wsisum-synth manifest")


def run_identity(preset_raw: dict, seed: int) -> dict:
    """What must match for a resume: generator, version, preset values and seed (the marker's content)."""
    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "preset": preset_raw, "seed": seed}


def _same_run(meta: Mapping[str, Any], preset_raw: dict, seed: int) -> bool:
    return not changed_keys(meta, run_identity(preset_raw, seed))


def _describe(meta: Mapping[str, Any]) -> str:
    preset = meta.get("preset")
    name = preset.get("name", "?") if isinstance(preset, Mapping) else "?"
    return f"preset '{name}' seed {meta.get('seed', '?')} (generator v{meta.get('generator_version', '?')})"


def _mismatch(meta: Mapping[str, Any], preset_raw: dict, seed: int) -> str:
    """One line naming what differs, including a same-named preset whose values were edited."""
    new = _describe(run_identity(preset_raw, seed))
    old = _describe(meta)
    if old == new:
        before = meta.get("preset") if isinstance(meta.get("preset"), Mapping) else {}
        keys = changed_keys(before, preset_raw, sorted(set(preset_raw) | set(before)))
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


def prepare_dir(out_dir: Path, preset_raw: dict, seed: int, overwrite: bool) -> dict | None:
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
