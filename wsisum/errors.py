"""One exception type for bad user input, so apps can print it as a single line and go on; and the
one printer of such lines (`print_error`: `error: <where>: <problem>` on stderr)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input that a user can fix: the message names the file and the problem, on one line."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the cause printed
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


def print_error(problem: object, prefix: str | None = "error") -> None:
    """What a user reads when something failed: `error: <where>: <problem>` (an `InputError` prints
    as `<where>: <problem>`) on stderr, flushed, so it is one line in order with the rest of the output.
    `prefix=None` prints the line as it is (a list of failures under its heading)."""
    print(str(problem) if prefix is None else f"{prefix}: {problem}", file=sys.stderr, flush=True)


def print_failures(lines: Iterable[object], heading: str | None = None) -> None:
    """Failures that did not stop a run: each an `error:` line, or, under `heading`, indented lines."""
    if heading is None:
        for line in lines:
            print_error(line)
        return
    print_error(heading, prefix=None)
    for line in lines:
        print_error(f"  {line}", prefix=None)


def short_error(err: BaseException) -> str:
    """A library's error text as one short line, for the one-line messages built from it."""
    text = " ".join(str(err).split())
    return text if len(text) <= 160 else text[:157] + "..."


def input_error_in(err: BaseException | None) -> InputError | None:
    """The user's one-line error inside a library's wrapping of it (Hydra's failed instantiation)."""
    for _ in range(10):
        if err is None or isinstance(err, InputError):
            return err
        err = err.__cause__ or err.__context__
    return None


def examples(items: Sequence[object], k: int = 3) -> str:
    """The first `k` of `items` for a one-line message: 'a, b, c, ...'."""
    items = list(items)
    return ", ".join(map(str, items[:k])) + (", ..." if len(items) > k else "")


def positive_int(value: Any, key: str) -> int:
    """An option that must be a whole number >= 1 (e.g. `budget`), checked before any work starts."""
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise InputError(None, f"{key}={value} is not a positive whole number")
    return number


def budget_option(value: Any, key: str = "budget") -> int | str:
    """A budget option: a positive whole number, or 'auto' for samplers that set their own size."""
    if str(value).strip().lower() == "auto":
        return "auto"
    return positive_int(value, key)


EXIT_DISK_FULL = 74  # sysexits' EX_IOERR: apart from 1 (bad input, failed slides) and 2 (a missing option)


class DiskFullError(Exception):
    """The output disk is full or over quota: nothing further can be written, so the run stops at once.
    The one line says where, what was finished, and that the same command resumes."""

    def __init__(self, where: str | Path, finished: str | None = None):
        self.where = str(where)
        done = f"; {finished}" if finished else ""
        super().__init__(
            f"{self.where}: no space left (disk full or over quota){done}; "
            "free space and re-run the same command to resume (finished outputs are kept)"
        )
