"""The console: one line per event, third-party chatter in the log file only, verbose=true shows it all."""

from __future__ import annotations

import io
import logging
import sys
import warnings

import pytest

from wsisum import console
from wsisum.console import STAGE_LOGGER, batch_console, capture_stdout, configure_console


@pytest.fixture
def handlers(tmp_path, monkeypatch):
    """Hydra's two handlers (terminal + run log file) on the root logger, restored afterwards."""
    monkeypatch.setattr(console, "_state", {"configured": False, "batch": False, "verbose": False})
    # an app that ran earlier in this process left warnings routed to logging, but pytest's per-test
    # warning capture has put the original showwarning back: start from the unrouted state
    logging.captureWarnings(False)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    term = logging.StreamHandler(sys.stdout)
    term.stream = io.StringIO()  # what the terminal shows (the filter keys on the handler, not the stream)
    monkeypatch.setattr(console, "is_console", lambda h: h is term)
    log_file = logging.FileHandler(tmp_path / "run.log")
    for h in (term, log_file):
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.handlers[:] = [term, log_file]
    root.setLevel(logging.INFO)
    yield term.stream, tmp_path / "run.log"
    log_file.close()
    root.handlers[:] = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def _lightning_line() -> None:
    import lightning  # noqa: F401  (adds its own console handler at import)

    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")


def test_lightning_lines_reach_the_log_file_once_and_not_the_terminal(handlers) -> None:
    term, log_file = handlers
    configure_console(verbose=False)
    assert not [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]
    _lightning_line()
    logging.getLogger("wsisum.x").info("pretraining on 64 slides")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("The number of training batches (8) is smaller than the logging interval", stacklevel=1)
        warnings.warn("a warning users must see", stacklevel=1)
    shown, kept = term.getvalue(), log_file.read_text()
    assert "GPU available" not in shown and kept.count("GPU available") == 1
    assert "logging interval" not in shown and "logging interval" in kept
    assert "pretraining on 64 slides" in shown and "a warning users must see" in shown


def test_verbose_shows_everything(handlers) -> None:
    term, _ = handlers
    configure_console(verbose=True)
    _lightning_line()
    assert "GPU available" in term.getvalue()


def test_a_batch_run_keeps_stage_output_in_the_log_file(handlers) -> None:
    term, log_file = handlers
    configure_console(verbose=False)
    with batch_console(verbose=False):
        configure_console(verbose=True)  # a stage's own config cannot undo the batch's setting
        assert console.is_batch()
        with capture_stdout(console.is_batch()):
            print("┃ metric ┃ mean ┃\nrandom budget=8: 64 summarized")
        logging.getLogger("wsisum.evaluate").info("epoch 3: val loss 0.6")
        logging.getLogger("wsisum.evaluate").warning("slide X skipped")
    assert not console.is_batch()
    shown, kept = term.getvalue(), log_file.read_text()
    assert "summarized" not in shown and "epoch 3" not in shown and "slide X skipped" in shown
    assert f"{STAGE_LOGGER}: random budget=8: 64 summarized" in kept and "epoch 3" in kept
