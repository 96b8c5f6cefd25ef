"""The console scripts as a user runs them: exit codes and one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.apps import run_app


def run(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_app(name.removeprefix("wsisum-"), *args, cwd=cwd, timeout=300, script=True)


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


def test_a_config_group_of_another_app_is_one_line(tmp_path: Path) -> None:
    """`wsisum-train experiment=demo`: one line naming the app that has the group, not Hydra's four."""
    for app, arg, owner in [
        ("train", "experiment=demo", "wsisum-pipeline"),
        ("summarize", "task=syn_brca", "wsisum-evaluate"),
    ]:
        r = run_app(app, arg, cwd=tmp_path, timeout=120)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert (
            lines[0].startswith(f"error: wsisum-{app} has no '{arg.split('=')[0]}' config group") and owner in lines[0]
        )
