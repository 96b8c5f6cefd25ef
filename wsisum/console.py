"""What reaches the terminal: one line per event; third-party chatter only in the run's log file.

Three faults made `make demo` print thousands of lines: Lightning logs through a handler of its own
and also to Hydra's (every INFO line twice), it announces tips, devices and seeds for each of ~100
runs, and Python warnings go straight to stderr. Here every record reaches Hydra's handlers once;
the console handler drops third-party INFO and the known-harmless warnings, the file handler keeps
everything. In a batch run (`wsisum-pipeline`) the console keeps warnings and errors only, and
what a stage prints goes to the log file (`capture_stdout`). `verbose=true` turns all of it off.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

THIRD_PARTY = ("lightning", "pytorch_lightning", "torchmetrics", "py.warnings", "hydra", "matplotlib", "wandb")
OWN_HANDLERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torchmetrics")
NOISE = (  # known, harmless third-party messages (kept in the log file)
    "LeafSpec",
    "smaller than the logging interval",
    "litlogger",
    "does not have many workers",
    "`Trainer.fit` stopped",
    "GPU available:",
    "TPU available:",
    "Seed set to",
)
STAGE_LOGGER = "wsisum.stage"  # what a pipeline stage printed, as log records
_state = {"configured": False, "batch": False, "verbose": False}


class ConsoleFilter(logging.Filter):
    """Drops, from a console handler only, what a user need not read (batch runs: below WARNING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state["verbose"]:
            return True
        if _state["batch"] and record.levelno < logging.WARNING:
            return False
        if record.name.startswith(THIRD_PARTY) and record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def is_console(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (not a log file, not a test's capture buffer)."""
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream in (
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    )


def configure_console(verbose: bool | None = None) -> None:
    """Route every record through the root's (Hydra's) handlers once, filtered on the console.

    Idempotent: each app calls it on start (`verbose` from its config; inside a batch run the
    batch's own setting holds) and again once Lightning is imported, which adds a handler at import.
    """
    if verbose is not None and not _state["batch"]:
        _state["verbose"] = bool(verbose)
    if not _state["configured"]:
        _state["configured"] = True
        logging.captureWarnings(True)  # warnings become records: to the log file, filtered on the console
    if not logging.getLogger().handlers:
        return  # no Hydra handlers (a notebook, a test): leave the libraries' own handlers alone
    for name in OWN_HANDLERS if "lightning" in sys.modules or "torchmetrics" in sys.modules else ():
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    for h in logging.getLogger().handlers:
        if is_console(h) and not any(isinstance(f, ConsoleFilter) for f in h.filters):
            h.addFilter(ConsoleFilter())


@contextlib.contextmanager
def batch_console(verbose: bool) -> Iterator[None]:
    """A batch run (the pipeline) owns the console: its stages print to the log file only."""
    configure_console(verbose)
    before = dict(_state)
    _state["batch"] = True
    try:
        with warnings.catch_warnings():
            if not verbose:  # per-call deprecations of Lightning internals: one per fit, ~100 per study
                warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        _state.update(batch=before["batch"], verbose=before["verbose"])


def is_batch() -> bool:
    """Whether a batch run owns the console (then stages turn their own bars and summaries off)."""
    return bool(_state["batch"] and not _state["verbose"])


class _LineLogger(io.TextIOBase):
    """A text stream that turns each printed line into one record of `STAGE_LOGGER`."""

    def __init__(self) -> None:
        self.log, self.pending = logging.getLogger(STAGE_LOGGER), ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.log.info(line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.log.info(self.pending.rstrip())
        self.pending = ""


@contextlib.contextmanager
def capture_stdout(enabled: bool) -> Iterator[None]:
    """A batch stage's prints (its tables, its summary line) into the log file, not the terminal."""
    if not enabled:
        yield
        return
    stream = _LineLogger()
    try:
        with contextlib.redirect_stdout(stream):
            yield
    finally:
        stream.flush()
