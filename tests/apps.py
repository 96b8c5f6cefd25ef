"""Running an app as a user does, in a subprocess: the one helper every test uses for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest


def app_command(app: str, script: bool = False) -> list[str]:
    """`python -m wsisum.apps.<app>`, or with `script` the installed console script `wsisum-<app>`
    (the entry point users type; the test skips where it is not installed)."""
    if not script:
        return [sys.executable, "-m", f"wsisum.apps.{app}"]
    name = f"wsisum-{app}"
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed")
    return [found]


def run_app(
    app: str,
    *args: str,
    cwd: Path,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    script: bool = False,
) -> subprocess.CompletedProcess:
    """Run one app with Hydra overrides `args` in `cwd`; output captured as text, never raising."""
    full_env = None if env is None else {**os.environ, **env}
    return subprocess.run(
        [*app_command(app, script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
