"""CLAM split files (`splits_<k>.csv`, columns ,train,val,test NaN-padded) with leakage checks.

Leakage is the fault that silently inflates every number downstream: the original study's BRCA
split repeats ids and puts 9 slides in both train and test. We refuse such a split by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pandas as pd

from wsisum.errors import InputError, examples

PARTS = ("train", "val", "test")
_SPLIT_NAME = re.compile(r"^splits_(\d+)\.csv$")


@dataclass(frozen=True)
class Split:
    """One fold: slide ids per partition, in file order, each id once."""

    path: str
    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)


def split_files(directory: str | Path) -> dict[int, Path]:
    """Fold number -> `splits_<k>.csv` in a CLAM splits directory (ignores _bool/_descriptor)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "splits directory not found (expected splits_<k>.csv inside)")
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := _SPLIT_NAME.match(p.name))}
    if not found:
        raise InputError(directory, "no splits_<k>.csv files")
    return dict(sorted(found.items()))


def _read_columns(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise InputError(path, "split file not found")
    try:
        df = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable CSV: {err}") from None
    missing = [c for c in PARTS if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing} (CLAM format: ,train,val,test)")
    return {c: [s.strip() for s in df[c].dropna() if s.strip()] for c in PARTS}


def split_problems(parts: Mapping[str, list[str]], case_of: Mapping[str, str] | None = None) -> list[str]:
    """Every integrity problem of one fold, as short phrases (empty list = clean)."""
    problems = []
    for name, ids in parts.items():
        seen: set[str] = set()
        dups = sorted({s for s in ids if s in seen or seen.add(s)})
        if dups:
            problems.append(f"{len(dups)} id(s) listed twice in {name} ({examples(dups)})")
    sets = {name: set(ids) for name, ids in parts.items()}
    for a, b in combinations(PARTS, 2):
        both = sorted(sets[a] & sets[b])
        if both:
            problems.append(f"{len(both)} slide id(s) in both {a} and {b} ({examples(both)})")
    if case_of:
        slides_by_case: dict[str, dict[str, set[str]]] = {}
        for name, ids in sets.items():
            for s in ids:
                slides_by_case.setdefault(name, {}).setdefault(case_of.get(s, s), set()).add(s)
        for a, b in combinations(PARTS, 2):
            ca, cb = slides_by_case.get(a, {}), slides_by_case.get(b, {})
            # a case counts when two DIFFERENT slides of it sit in a and b (same-id overlap is reported above)
            shared = sorted(c for c in set(ca) & set(cb) if ca[c] ^ cb[c])
            if shared:
                eg = [f"{c}: {sorted(ca[c])[0]} ({a}) / {sorted(cb[c])[0]} ({b})" for c in shared[:2]]
                problems.append(f"{len(shared)} case(s) with slides in both {a} and {b} ({'; '.join(eg)})")
    return problems


def read_split(
    path: str | Path,
    *,
    case_of: Mapping[str, str] | None = None,
    allow_leakage: bool = False,
) -> Split:
    """Read one CLAM split; duplicated ids or slides/cases shared by two partitions are an error.

    With `allow_leakage=True` (for inspecting old studies) the problems are tolerated and each id is
    kept once, in the first partition (train, val, test order) that lists it.
    """
    path = Path(path)
    parts = _read_columns(path)
    problems = split_problems(parts, case_of)
    if problems and not allow_leakage:
        raise InputError(path, "leaky split: " + "; ".join(problems))
    m = _SPLIT_NAME.match(path.name)
    fold = int(m.group(1)) if m else 0
    taken: set[str] = set()
    clean = {}
    for name in PARTS:
        kept = []
        for s in parts[name]:
            if s not in taken:
                taken.add(s)
                kept.append(s)
        clean[name] = tuple(kept)
    return Split(str(path), fold, clean["train"], clean["val"], clean["test"])


def write_split(path: str | Path, train: list[str], val: list[str], test: list[str]) -> Path:
    """Write a CLAM-format split file atomically (columns NaN-padded to the longest)."""
    from wsisum.data.atomic import atomic_path

    cols = {"train": pd.Series(train, dtype=object), "val": pd.Series(val, dtype=object)}
    cols["test"] = pd.Series(test, dtype=object)
    df = pd.DataFrame(cols)
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp)
    return path
