"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    The temp file lives in the same directory so the rename is atomic on POSIX file systems.
    Its name starts with `TMP_PREFIX` so leftovers of a killed process are recognisable and are
    never mistaken for outputs (they do not end in the output suffix).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temps(directory: str | Path) -> int:
    """Delete temp files left by killed writers under `directory`; returns how many were removed."""
    directory = Path(directory)
    if not directory.exists():
        return 0
    n = 0
    for p in directory.rglob(f"{TMP_PREFIX}*.part"):
        p.unlink(missing_ok=True)
        n += 1
    return n
