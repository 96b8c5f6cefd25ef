"""Read-only HDF5 opens that work on cluster file systems and notice a file still being written.

HDF5 locks every file it opens. On NFS and Lustre mounts without lock support that fails (errno 11
or 37) unless the user knows `HDF5_USE_FILE_LOCKING=FALSE`, and wsisum only ever reads finished
files, so reads skip HDF5's lock (`locking=False`). Without it HDF5 would happily read a bag that
TRIDENT or another tool is still writing, so `open_h5` first asks, without waiting, whether a writer
holds the file's lock, and refuses such a bag in one line. Setting `HDF5_USE_FILE_LOCKING=TRUE` (or
`BEST_EFFORT`) hands locking back to HDF5, which then refuses the same bag itself.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py

from wsisum.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks to ask about
    fcntl = None  # type: ignore[assignment]

BEING_WRITTEN = "being written by another process (it holds the file's HDF5 write lock): run again when it is done"
STILL_FLAGGED = (
    "being written by another process, or its writer died (HDF5 marks the file open for write; "
    "`h5clear -s` clears a stale mark)"
)
NO_LOCKS = "this file system does not support HDF5 file locking: unset HDF5_USE_FILE_LOCKING or set it to FALSE"


# `locking=` needs HDF5 >= 1.12.1; an h5py built on an older HDF5 follows HDF5_USE_FILE_LOCKING only
HAS_LOCKING_ARG = h5py.version.hdf5_version_tuple >= (1, 12, 1)


def hdf5_locks_reads() -> bool:
    """True when the user asked HDF5 to lock reads (`HDF5_USE_FILE_LOCKING` set, and not to FALSE)."""
    value = os.environ.get("HDF5_USE_FILE_LOCKING")
    return value is not None and value.strip().upper() not in ("FALSE", "0")


def writer_holds(path: str | Path) -> bool:
    """Whether another process holds the exclusive lock an HDF5 writer takes; False when the file
    system has no locks (nothing to ask) or the file cannot be opened (h5py then says why)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # readers share; only a writer's lock conflicts
    except OSError as err:
        return err.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        os.close(fd)  # also drops our shared lock
    return False


def open_h5(path: str | Path) -> h5py.File:
    """`h5py.File(path, "r")` without HDF5's lock (unless asked for); a bag still being written is
    one `InputError` line, other failures are h5py's own (the callers name them)."""
    locked = hdf5_locks_reads()
    if not locked and writer_holds(path):
        raise InputError(path, BEING_WRITTEN)
    try:
        return h5py.File(path, "r", locking=None if locked or not HAS_LOCKING_ARG else False)
    except OSError as err:
        text = str(err)
        if "already open for write" in text:  # superblock flags of a writer with libver="latest" or SWMR
            raise InputError(path, STILL_FLAGGED) from None
        if "unable to lock file" in text and "errno = 11" in text:  # HDF5's own lock, when asked for
            raise InputError(path, BEING_WRITTEN) from None
        if "unable to lock file" in text:
            raise InputError(path, NO_LOCKS) from None
        raise
