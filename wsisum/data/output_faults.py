"""Faults on the output side, found before work starts or stopped at once: an output location that
cannot be written, and a disk that is full or over quota (ENOSPC, EDQUOT)."""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from wsisum.data.atomic import TMP_PREFIX
from wsisum.errors import DiskFullError, InputError

PROBE_BYTES = 16 * 1024  # at least a run's first files (Hydra's .hydra record: three small YAML files)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# HDF5 reports the OS error inside its own message (h5py raises it as an OSError without errno, or as
# a RuntimeError from a flush), and a failed DDP rank reaches the launcher as text
DISK_FULL_TEXT = ("no space left", "disk quota exceeded", "errno = 28,", "errno = 122,")


def disk_full_cause(err: BaseException | None) -> BaseException | None:
    """The disk-full OSError in `err`'s chain (wrappers such as Hydra's or Lightning's included)."""
    seen = 0
    while err is not None and seen < 10:
        if (isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS) or any(
            t in str(err).lower() for t in DISK_FULL_TEXT
        ):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def where_full(err: BaseException, fallback: str | Path) -> str:
    """The file the full disk refused, when the OS error names it (a copy's destination is its second
    name; h5py's errors name none)."""
    name = getattr(err, "filename2", None) or getattr(err, "filename", None)
    if not name:
        return str(fallback)
    path = Path(str(name))
    return str(path.parent if path.name.startswith(TMP_PREFIX) else path)  # a temp file: its directory


def check_writable(directory: str | Path, what: str = "output directory") -> Path:
    """Create `directory` and a probe file in it (then remove it): an unwritable location (read-only
    mount, permissions, a file in the way) or a full one is one line before any work starts, not a
    traceback later. Writing a file is the only test that holds on every file system: access(2)
    ignores read-only mounts on some network file systems and always says yes to root; and an empty
    file fits on a full disk, so the probe writes PROBE_BYTES."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(directory, f"cannot write the {what} here (a file, not a directory)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", suffix=".part", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:  # buffered: a short write(2) on a nearly full disk is retried, then fails
                f.write(b"\0" * PROBE_BYTES)
                f.flush()
                os.fsync(f.fileno())  # some network file systems report a full quota only when data is flushed
        finally:
            os.unlink(probe)
    except OSError as err:
        if disk_full_cause(err) is not None:
            raise DiskFullError(directory) from None
        raise InputError(directory, f"cannot write the {what} here ({err.strerror or err})") from None
    return directory


def disk_is_full(directory: str | Path) -> bool:
    """Whether `directory` cannot take a PROBE_BYTES file for lack of space: why a worker or DDP rank
    that died mid-write (HDF5 can crash on a failed write) died."""
    try:
        check_writable(directory)
    except DiskFullError:
        return True
    except InputError:
        return False
    return False


def _is_h5py_dealloc(unraisable: Any) -> bool:
    return "ObjectID.__dealloc__" in str(getattr(unraisable, "object", None))


def _through_h5py_dealloc(tb: Any) -> bool:
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name.endswith("_dealloc") and "h5py" in code.co_filename:  # Cython: h5py._objects.ObjectID._dealloc
            return True
        tb = tb.tb_next
    return False


def quiet_h5py_dealloc() -> None:
    """Drop h5py's tracebacks from `ObjectID.__dealloc__`: after a failed write (a full disk) HDF5
    cannot close the file it was writing and says so at garbage collection, through both hooks (the
    Cython deallocator prints the traceback, then `Exception ignored in`). The failure itself was
    already reported in one line; every other exception still reaches the original hooks."""
    if getattr(sys.unraisablehook, "wsisum_quiet", False):
        return
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def on_unraisable(unraisable: Any) -> None:
        if not (_is_h5py_dealloc(unraisable) or _through_h5py_dealloc(getattr(unraisable, "exc_traceback", None))):
            unraisable_hook(unraisable)

    def on_except(kind: Any, value: Any, tb: Any) -> None:
        if not _through_h5py_dealloc(tb):
            except_hook(kind, value, tb)

    on_unraisable.wsisum_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = on_unraisable, on_except
