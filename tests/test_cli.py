"""The console scripts as a user runs them: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _script(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        found = shutil.which(name)
        if not found:
            pytest.skip(f"{name} is not installed")
        exe = Path(found)
    return [str(exe)]


def run(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_script(name), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_synth_writes_tiny_cohort_then_refuses_other_seed(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    r = run("wsisum-synth", f"out_dir={out}", "preset=tiny", "progress=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "cohort.json").read_text())
    assert manifest["complete"] is True
    assert (tmp_path / "outputs" / "synth" / "runs").is_dir()  # hydra run dir under the cwd
    again = run("wsisum-synth", f"out_dir={out}", "preset=tiny", "progress=false", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    other = run("wsisum-synth", f"out_dir={out}", "preset=tiny", "seed=5", "progress=false", cwd=tmp_path)
    assert other.returncode == 1
    err_lines = [line for line in other.stderr.splitlines() if line.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and str(out) in err_lines[0]
    assert "Traceback" not in other.stderr


def test_synth_requires_out_dir(tmp_path: Path) -> None:
    r = run("wsisum-synth", "preset=tiny", cwd=tmp_path)
    assert r.returncode != 0 and "out_dir" in r.stderr and "Traceback" not in r.stderr
