"""scripts/bench_samplers.py runs end to end on tiny slides, and the default summary shows no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_samplers.py"


def test_bench_samplers_tiny_markdown() -> None:
    cmd = [sys.executable, str(SCRIPT), "--sizes", "300", "600", "--dim", "16", "--budget", "8"]
    cmd += ["--samplers", "kmeans", "wsisum", "attention", "--markdown"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    cells = {(r[0].strip(), r[1].strip()): [c.strip() for c in r] for r in rows}
    assert cells[("300", "kmeans")][3] == "1.0"  # its own ratio to kmeans
    assert cells[("600", "wsisum")][5] == "no"  # the default summary never imports torch
    assert ("300", "(read only)") in cells
    assert any(r[0].strip() == "wsisum" for r in rows if len(r) == 3)  # the scaling table
    assert "skipped attention:" in out  # needs a checkpoint: skipped with its reason
