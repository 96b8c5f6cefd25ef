"""Read-only HDF5 opens that work on cluster file systems and notice a file still being written.

HDF5 locks every file it opens. On NFS and Lustre mounts without lock support that fails (errno 11
or 37) unless the user knows `HDF5_USE_FILE_LOCKING=FALSE`, and wsisum only ever reads finished
files, so reads skip HDF5's lock (`locking=False`). Without it HDF5 would happily read a bag that
TRIDENT or another tool is still writing, so `open_h5` first asks, without waiting, whether a writer
holds the file's lock, and refuses such a bag in one line. Setting `HDF5_USE_FILE_LOCKING=TRUE` (or
`BEST_EFFORT`) hands locking back to HDF5, which then refuses the same bag itself.

`read_h5_header` is the one header read (shapes, dtypes, attrs; no data) that bags, teacher files and
the report's summary and source bags go through; `reading_h5` turns any failure inside an open into
one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsisum.errors import InputError, short_error

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


UNREADABLE = "unreadable HDF5 file (truncated or corrupt?)"


@contextlib.contextmanager
def reading_h5(path: str | Path, problem: str = UNREADABLE) -> Iterator[h5py.File]:
    """`open_h5`, with whatever h5py raises inside (a truncated file, a missing key) turned into one
    `InputError` line: `<path>: <problem>: <h5py's reason>`. An `InputError` passes as it is."""
    try:
        with open_h5(path) as f:
            yield f
    except InputError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise InputError(path, f"{problem}: {short_error(err)}") from None


def plain_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """HDF5 attrs as plain Python values: bytes decoded, numpy scalars unwrapped (arrays stay)."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def open_dataset(f: h5py.File, name: str) -> h5py.h5d.DatasetID | None:
    """The dataset `name` through h5py's low-level API, or None where there is none (or a group).

    Why low level: a bag is read once per epoch, and for the small bags of summaries the high-level
    `name in f` / `f[name]` / `ds[()]` calls cost more than the read (scripts/bench_io.py: 0.66 ms
    against 0.49 ms per 0.4 MB bag), which made the training loader slower than a plain h5py loop.
    """
    try:
        return h5py.h5d.open(f.id, name.encode())
    except KeyError:  # absent, or not a dataset
        return None


def missing_dataset(path: str | Path, name: str, names: Iterable[str]) -> InputError:
    """The line for a file without dataset `name`, listing what it holds instead (`names`)."""
    return InputError(path, f"no '{name}' dataset (found: {sorted(names) or 'nothing'})")


@dataclass(frozen=True)
class DatasetHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any] = field(default_factory=dict)  # read only when asked for


@dataclass(frozen=True)
class H5Header:
    """What a header read found: the asked-for datasets that exist, and the file's attrs if asked for."""

    path: Path
    datasets: dict[str, DatasetHeader]
    attrs: dict[str, Any]
    names: tuple[str, ...] = ()  # every top-level name, listed only when an asked-for dataset is missing

    def require(self, name: str, problem: str | None = None) -> DatasetHeader:
        """The dataset's header, or one `InputError` line (by default naming what the file holds)."""
        if name not in self.datasets:
            raise InputError(self.path, problem) if problem else missing_dataset(self.path, name, self.names)
        return self.datasets[name]


def read_h5_header(
    path: str | Path, datasets: Sequence[str] = ("features",), attrs: bool = False, dataset_attrs: Sequence[str] = ()
) -> H5Header:
    """Shape and dtype of each dataset in `datasets` that the file has (a group or nothing of that name
    is left out), the attrs of those in `dataset_attrs`, and with `attrs` the file's; no data is read.

    Datasets are opened through `open_dataset`: a cohort scan reads thousands of headers.
    """
    path = Path(path)
    found: dict[str, DatasetHeader] = {}
    with reading_h5(path) as f:
        for name in datasets:
            dsid = open_dataset(f, name)
            if dsid is None:
                continue
            extra = plain_attrs(h5py.Dataset(dsid).attrs) if name in dataset_attrs else {}
            found[name] = DatasetHeader(tuple(dsid.shape), dsid.dtype, extra)
        names = tuple(sorted(f.keys())) if len(found) < len(datasets) else ()
        file_attrs = plain_attrs(f.attrs) if attrs else {}
    return H5Header(path, found, file_attrs, names)
