"""`labels/<task>.csv`: slide_id,label[,case_id]. Labels are class names (or integers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wsisum.errors import InputError, examples


@dataclass(frozen=True)
class Labels:
    """One task's labels: slide -> class index, slide -> case (patient), and the class names."""

    path: str
    classes: tuple[str, ...]
    label_of: dict[str, int]
    case_of: dict[str, str]

    def __len__(self) -> int:
        return len(self.label_of)


def read_labels(path: str | Path, classes: Sequence[str] | None = None) -> Labels:
    """Read and validate a labels CSV; `classes` fixes the class order (else sorted names found)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "labels file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(path, f"unreadable CSV: {err}") from None
    missing = [c for c in ("slide_id", "label") if c not in df.columns]
    if missing:
        raise InputError(path, f"missing column(s) {missing} (need slide_id,label[,case_id])")
    df["slide_id"] = df["slide_id"].str.strip()
    df["label"] = df["label"].str.strip()
    if df.empty:
        raise InputError(path, "no rows")
    blank = df.index[(df["slide_id"] == "") | (df["label"] == "")]
    if len(blank):
        raise InputError(path, f"{len(blank)} row(s) with an empty slide_id or label (first at line {blank[0] + 2})")
    dup = df["slide_id"][df["slide_id"].duplicated()].unique()
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicated slide id(s): {examples(dup)}")
    found = sorted(df["label"].unique())
    if classes is None:
        classes = found
    classes = [str(c) for c in classes]
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise InputError(path, f"label(s) {unknown} not among the task's classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    label_of = {s: index[lab] for s, lab in zip(df["slide_id"], df["label"])}
    if "case_id" in df.columns:
        cases = df["case_id"].str.strip()
        case_of = {s: (c or s) for s, c in zip(df["slide_id"], cases)}
    else:
        case_of = {s: s for s in df["slide_id"]}
    return Labels(str(path), tuple(classes), label_of, case_of)
