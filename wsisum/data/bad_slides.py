"""The record of slides a run skipped as bad input, shared by every process of the run.

Each process appends to its own file under `<run dir>/bad_slides/` the moment it skips a slide, so
the record survives a crash and reaches the launching process from spawned DDP workers and other
nodes (a shared filesystem is all it needs). At the end the app merges them into `bad_slides.csv`,
prints one line per slide and exits non-zero.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Literal, get_args

from wsisum.data.atomic import atomic_path
from wsisum.errors import InputError, print_error, print_failures

log = logging.getLogger(__name__)
LEDGER_DIR = "bad_slides"
LEDGER_FILE = "bad_slides.csv"
OnBadSlide = Literal["skip", "error"]  # data.on_bad_slide: report and go on, or stop at the first


def check_on_bad(value: str) -> str:
    if value not in get_args(OnBadSlide):
        raise InputError(None, f"on_bad_slide={value!r}: use one of {list(get_args(OnBadSlide))}")
    return value


class BadSlideLedger:
    """Appends `slide_id<TAB>message` lines to `<run dir>/bad_slides/<process>.tsv`; each slide once."""

    def __init__(self, run_dir: str | Path, process: str | None = None):
        self.dir = Path(run_dir) / LEDGER_DIR
        self.file = self.dir / f"{process or f'pid{os.getpid()}'}.tsv"
        self.seen: dict[str, str] = {}

    def add(self, slide_id: str, message: str) -> bool:
        """Record a skipped slide; returns False when this process already recorded it."""
        if slide_id in self.seen:
            return False
        self.seen[slide_id] = message
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.file, "a") as f:  # one short line per write: appends do not interleave
            f.write(f"{slide_id}\t{' '.join(message.split())}\n")
        log.warning("skipping slide %s: %s", slide_id, message)
        return True

    def add_all(self, skipped: dict[str, str]) -> None:
        """Record what a DataModule's setup left out (its `skipped`)."""
        for slide_id, message in skipped.items():
            self.add(slide_id, message)


def read_ledger(run_dir: str | Path) -> dict[str, str]:
    """Every skipped slide of a run (all processes), slide id -> message, in slide-id order."""
    found: dict[str, str] = {}
    for path in sorted((Path(run_dir) / LEDGER_DIR).glob("*.tsv")):
        for line in path.read_text().splitlines():
            sid, _, message = line.partition("\t")
            if sid:
                found.setdefault(sid, message)
    return dict(sorted(found.items()))


def runs_with_bad_slides(root: str | Path, pattern: str = f"*/{LEDGER_FILE}") -> list[tuple[Path, int]]:
    """(run dir, how many slides it skipped) for each run under `root` that skipped any (sweep jobs,
    pipeline stages), so a sweep or a study can fail loudly at its end."""
    root = Path(root)
    found = sorted(root.glob(pattern)) if root.is_dir() else []
    return [(p.parent, len(read_ledger(p.parent))) for p in found]


def report_bad_slides(run_dir: str | Path, what: str) -> int:
    """Write `bad_slides.csv` and print one line per skipped slide to stderr; returns their number."""
    bad = read_ledger(run_dir)
    if not bad:
        return 0
    with atomic_path(Path(run_dir) / LEDGER_FILE) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["slide_id", "problem"])
        writer.writerows(bad.items())
    print_failures(bad.values(), f"{len(bad)} slide(s) skipped as bad input ({what} ran without them):")
    print_error(f"list: {Path(run_dir) / LEDGER_FILE}", prefix=None)
    return len(bad)
