"""Recipe fingerprints and "done" markers: was this output already made, and with this recipe?

One mechanism for every output that a re-run may reuse:

- a study stage: `RUN_DIR/.stages/<key>.json` holds the stage's `fingerprint` (its resolved config
  plus the fingerprints of the stages it reads) once it finished (`wsisum.pipeline.study`);
- pretraining: `<train dir>/recipe.json` holds the fingerprint its checkpoints were trained with, so
  an interrupted run resumes only its own recipe;
- a synthetic cohort: `.wsisum-synth.json` holds the generator, preset and seed (the recipe itself,
  not a hash of it, so a refusal can say what differs);
- a summary bag: its recipe is in its own HDF5 attrs (`wsisum.summarize.writer`); only the comparison
  (`changed_keys`) is shared, the attrs are read with the bag's header.

Markers are JSON objects written atomically (temp file + rename), so one is complete or absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError

FINGERPRINT = "fingerprint"


def plain_recipe(recipe: Any) -> Any:
    """A recipe as plain JSON-able data: an OmegaConf config resolved into containers, else as is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(recipe, DictConfig | ListConfig):
        return OmegaConf.to_container(recipe, resolve=True)
    return recipe


def fingerprint(recipe: Any, upstream: Sequence[str] = ()) -> str:
    """16 hex digits of the recipe (key order does not matter) and of the fingerprints it builds on."""
    text = json.dumps(plain_recipe(recipe), sort_keys=True, default=str) + "|" + "|".join(upstream)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def write_marker(path: str | Path, record: Mapping[str, Any], indent: int | None = None) -> Path:
    """Write a marker atomically: compact JSON on one line, or with `indent` pretty and newline-ended."""
    path = Path(path)
    text = json.dumps(record) if indent is None else json.dumps(record, indent=indent) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def read_marker(path: str | Path, fix: str = "delete it to start again", kind: str = "wsisum marker") -> dict | None:
    """A marker's record, None when there is none; a damaged one is one `InputError` line (never
    silently replaced: it may be another tool's file), ending in how to `fix` it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"unreadable ({err}); {fix}") from None
    if not isinstance(record, dict):
        raise InputError(path, f"is not a {kind}; {fix}")
    return record


def recorded_fingerprint(path: str | Path) -> str | None:
    """The fingerprint a marker records; None when there is no marker (or it records none)."""
    record = read_marker(path)
    return None if record is None else record.get(FINGERPRINT)


def changed_keys(
    found: Mapping[str, Any], wanted: Mapping[str, Any], keys: Iterable[str] | None = None, as_text: bool = False
) -> list[str]:
    """The keys (`keys`, else every key of `wanted`) whose value in `found` is not the wanted one, in
    order. `as_text` compares their text: HDF5 attrs come back as numpy scalars or bytes."""
    out = []
    for k in wanted if keys is None else keys:
        a, b = found.get(k), wanted.get(k)
        if (str(a) != str(b)) if as_text else (a != b):
            out.append(k)
    return out
