"""`generate_cohort`: validate, plan, then write (or resume, or skip) a whole synthetic cohort.

The only entry point that touches a directory; the modules it calls are pure (spec, plan, atlas,
geometry, slide) or write one kind of file (writer, manifest).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.atomic import remove_stale_temps
from wsisum.data.ground_truth import MANIFEST_NAME
from wsisum.data.synthetic.atlas import build_atlas
from wsisum.data.synthetic.layout import MARKER_NAME, bag_path, embedding_path, expected_files
from wsisum.data.synthetic.manifest import build_manifest, prepare_dir, run_identity, write_json
from wsisum.data.synthetic.plan import plan_dataset
from wsisum.data.synthetic.preset import parse_preset
from wsisum.data.synthetic.slide import build_slide
from wsisum.data.synthetic.writer import write_labels_and_splits, write_slide
from wsisum.errors import InputError
from wsisum.progress import item_bar


@contextlib.contextmanager
def _slide_bar(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
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
    done = prepare_dir(out_dir, preset_raw, seed, overwrite)
    if done is not None and all(p.exists() for p in expected_files(out_dir, spec, plans)):
        return done
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete from here until the end
    write_json(out_dir / MARKER_NAME, run_identity(preset_raw, seed))
    atlas = build_atlas(spec, seed)
    total = sum(len(v) for v in plans.values())
    with _slide_bar(total, progress) as advance:
        for d in spec.datasets:
            for plan in plans[d.name]:
                missing = not bag_path(out_dir, plan).exists() or any(
                    not embedding_path(out_dir, plan, t.name).exists() for t in spec.teachers
                )
                if missing:
                    write_slide(out_dir, build_slide(plan, d, spec, atlas, seed), d, spec, atlas, seed)
                advance(d.name)
    for d in spec.datasets:
        write_labels_and_splits(out_dir, d, plans[d.name], spec, seed)
    manifest = build_manifest(preset_raw, spec, seed, plans)
    write_json(out_dir / MANIFEST_NAME, manifest)
    return json.loads(json.dumps(manifest))
