"""One progress mechanism for every long loop: a rich bar with count, rate and ETA.

Inside `wsisum-pipeline` the bars of a stage (slides summarized, cohort slides written) become rows
of the study's own display, under its stages bar, so the terminal shows stages x items with one ETA
each instead of a new bar per stage. Outside a study each loop gets a bar of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[..., None]  # advance(n=1, description=None): one more item done
_study_display: Progress | None = None  # the pipeline's display while a study runs


class RateColumn(ProgressColumn):
    """Items per second in the task's own unit (rich has only a bytes/s column built in)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


def columns() -> tuple[ProgressColumn, ...]:
    return (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def item_bar(total: int, label: str, unit: str = "slides", enabled: bool = True) -> Iterator[Advance]:
    """A bar over `total` items; yields `advance(n=1, description=None)`. A no-op when disabled."""
    if not enabled:
        yield lambda n=1, description=None: None
        return
    display = _study_display
    if display is not None:  # a row of the study's display, removed when the loop ends
        task = display.add_task(f"  {label}", total=total, unit=unit)
        try:
            yield lambda n=1, description=None: display.update(task, advance=n, **_described(description))
        finally:
            display.remove_task(task)
        return
    with Progress(*columns()) as bar:
        task = bar.add_task(label, total=total, unit=unit)
        yield lambda n=1, description=None: bar.update(task, advance=n, **_described(description))


def _described(description: str | None) -> dict[str, Any]:
    return {} if description is None else {"description": description}


def print_line(text: str) -> None:
    """One event line (a failed slide): above the bars when a study display is live."""
    if _study_display is not None:
        _study_display.console.print(text)
    else:
        Console().print(text)


@contextlib.contextmanager
def study_display(console: Console, total: int) -> Iterator[Advance]:
    """The pipeline's display: a stages bar over `total` stages, item bars of the running stage below it.
    Transient: what stays on the terminal is the one line per stage that the study prints."""
    global _study_display
    with Progress(*columns(), console=console, transient=True) as display:
        task = display.add_task("stages", total=total, unit="stages")
        _study_display = display
        try:
            yield lambda n=1, description=None: display.update(task, advance=n, **_described(description))
        finally:
            _study_display = None
