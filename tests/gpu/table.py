"""The table of the GPU checks: a pytest plugin that keeps one row per `gpu` test, sets its status from
the test's outcome, prints the table after the run, and writes it to `out` (`.json`: JSON, else Markdown).

A test names its row with its marker, `@pytest.mark.gpu(check="kmeans", device="cuda")`, and hands
its measured row to the `record` fixture; a test that skips or fails before measuring still gets its
row, with the reason. tests/gpu/conftest.py registers a table for any run that has none, and
scripts/check_gpu.py passes its own (with `out` and `small`) to `pytest.main`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tests.gpu.common import Row, environment, environment_line, one_line, size_label, sizes
from wsisum.markdown import pipe_table

PLUGIN_NAME = "wsisum-gpu-checks"
COLUMNS = ["check", "device", "size", "seconds", "key figure", "status", "reason"]


def outcome_reason(report: pytest.TestReport) -> str:
    """The first line of why a test was skipped or failed."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return one_line(longrepr[2].removeprefix("Skipped: "))
    crash = getattr(longrepr, "reprcrash", None)
    return one_line(crash.message if crash is not None else str(longrepr))


def markdown(rows: list[Row], title: str) -> str:
    """The title, a blank line, and the rows as a pipe table (a `|` inside a cell escaped)."""
    cells = [
        [r.check, r.device, r.size, "" if r.seconds is None else f"{r.seconds:.2f}", r.key, r.status, r.reason]
        for r in rows
    ]
    escaped = [[c.replace("|", "\\|") for c in row] for row in cells]
    return f"{title}\n\n{pipe_table(COLUMNS, escaped, right={3})}"


class CheckTable:
    def __init__(self, out: Path | None = None, small: bool = False) -> None:
        self.out = out
        self.small = small
        self.rows: dict[str, Row] = {}  # test id -> row, in the order the tests ran
        self.started = time.perf_counter()

    @classmethod
    def of(cls, config: pytest.Config) -> CheckTable:
        """The table registered with this pytest run; one is registered now if there is none."""
        for plugin in config.pluginmanager.get_plugins():
            if isinstance(plugin, cls):
                return plugin
        table = cls()
        config.pluginmanager.register(table, PLUGIN_NAME)
        return table

    def add(self, nodeid: str, row: Row) -> Row:
        self.rows[nodeid] = row
        return row

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        mark = item.get_closest_marker("gpu")
        if mark is not None and "check" in mark.kwargs:
            check, device = mark.kwargs["check"], mark.kwargs["device"]
            self.add(item.nodeid, Row(check, device, size_label(check, device, sizes(self.small)), status=""))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.rows.get(report.nodeid)
        if row is None or row.status == "FAIL":
            return
        if report.failed:
            row.status, row.reason = "FAIL", outcome_reason(report)
        elif report.skipped:
            row.status, row.reason = "SKIP", outcome_reason(report)
        elif report.when == "call":
            row.status = "OK"

    def document(self) -> dict[str, Any]:
        rows = list(self.rows.values())
        return {
            "small": self.small,
            "total_seconds": time.perf_counter() - self.started,
            "ok": not any(r.status == "FAIL" for r in rows),
            "env": environment(),
            "rows": [asdict(r) for r in rows],
        }

    def render(self, doc: dict[str, Any]) -> str:
        title = f"check_gpu{' --small' if doc['small'] else ''} ({doc['total_seconds']:.0f} s): "
        return markdown([Row(**r) for r in doc["rows"]], title + environment_line(doc["env"]))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.rows:
            return
        doc = self.document()
        text = self.render(doc)
        terminalreporter.write_sep("=", "GPU checks")
        for line in text.splitlines():
            terminalreporter.write_line(line)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            as_json = self.out.suffix == ".json"
            self.out.write_text(json.dumps(doc, indent=2, default=str) if as_json else text)
            terminalreporter.write_line(f"written to {self.out}")
