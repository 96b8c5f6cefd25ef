"""Summary bags: `out_dir/<dataset>/<slide_id>.h5` readable by any CLAM/TRIDENT-style tool.

features (K, D) and coords (K, 2) are the source rows at `indices` (K,); attrs say how they were
chosen (sampler, budget, seed, score, source) so a summary is never separated from its recipe, and
`n_kept` its size (budget=auto samplers size each slide's summary themselves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.bags import Bag, write_bag
from wsisum.data.hdf5 import open_h5, plain_attrs
from wsisum.data.markers import changed_keys
from wsisum.sampling.base import Selection
from wsisum.version import __version__

RECIPE_KEYS = ("sampler", "budget", "seed")


def summary_path(out_dir: str | Path, dataset: str, slide_id: str) -> Path:
    return Path(out_dir) / dataset / f"{slide_id}.h5"


def relative_source(bag_path: str | Path, data_root: str | Path) -> str:
    """The source bag relative to the cohort root (no absolute paths baked into outputs)."""
    try:
        return str(Path(bag_path).resolve().relative_to(Path(data_root).resolve()))
    except ValueError:
        return str(Path(bag_path).resolve())


def write_summary(path: str | Path, bag: Bag, selection: Selection, recipe: dict[str, Any], source: str) -> Path:
    idx = np.asarray(selection.indices, dtype=np.int64)
    attrs = {k: v for k, v in recipe.items() if v is not None and not isinstance(v, dict | list)}
    attrs |= {
        "source": source,
        "n_source": bag.n_patches,
        "n_kept": len(idx),  # the summary's size: below the budget on small slides, the sampler's own with auto
        "score": np.nan if selection.score is None else float(selection.score),
        "wsisum_version": __version__,
    }
    attrs |= {k: v for k, v in selection.attrs.items() if v is not None}
    extras = {"indices": idx}
    if selection.scores is not None:
        extras["scores"] = np.asarray(selection.scores, dtype=np.float32)
    coords = None if bag.coords is None else bag.coords[idx]
    return write_bag(path, bag.features[idx], coords, attrs=attrs, coords_attrs=bag.coords_attrs, extras=extras)


def existing_recipe(path: str | Path) -> dict[str, Any] | None:
    """The recipe attrs of a finished summary, or None when there is none (or it is unreadable).

    A summary is its own "done" marker: its recipe is in its attrs, written with it atomically. Not
    `read_h5_header`: an unreadable file here is not an error but a summary still to be written
    (h5py's OSError), while a file that another process is writing stays one (`open_h5`'s line).
    """
    try:
        with open_h5(path) as f:
            if "indices" not in f:
                return None
            return plain_attrs(f.attrs)
    except OSError:
        return None


def recipe_mismatch(found: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Name the first recipe key that differs, so a re-run never silently mixes two recipes."""
    changed = changed_keys(found, wanted, [k for k in RECIPE_KEYS if k in wanted], as_text=True)
    return f"{changed[0]}={found.get(changed[0])} (this run: {wanted[changed[0]]})" if changed else None


def existing_conflict(path: str | Path, wanted: dict[str, Any]) -> tuple[bool, str | None]:
    """(finished, problem) for a summary path: (True, None) when it holds this recipe, (True, message)
    when it holds another one, (False, None) when there is no finished summary."""
    found = existing_recipe(path) if Path(path).exists() else None
    if found is None:
        return False, None
    problem = recipe_mismatch(found, wanted)
    if problem is None:
        return True, None
    return True, f"{path}: exists with another recipe, {problem}; use overwrite=true or another out_dir"
