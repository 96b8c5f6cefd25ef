"""Put a study's report on W&B: its tables as `wandb.Table`s, its plots and heatmaps as images.

Offline by default (no network at run time): the run lands in RUN_DIR/wandb/offline-run-*, and
`wandb sync` uploads it later. The study name is the W&B group, so its training runs (logger=wandb
with the same group) and the report sit together on one dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


def export_to_wandb(
    run_dir: str | Path,
    paths: Mapping[str, Path],
    *,
    project: str = "wsisum",
    group: str | None = None,
    name: str | None = None,
    offline: bool = True,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Log every CSV table and PNG figure of a built report; returns the W&B run directory."""
    import wandb

    run = wandb.init(
        project=project,
        group=group,
        name=name,
        job_type="report",
        dir=str(run_dir),
        mode="offline" if offline else "online",
        config=dict(config or {}),
        settings=wandb.Settings(silent=True),
    )
    try:
        payload: dict[str, Any] = {}
        for key, path in sorted(paths.items()):
            path = Path(path)
            if path.suffix == ".csv" and path.is_file():
                payload[f"tables/{key}"] = wandb.Table(dataframe=pd.read_csv(path))
            elif path.suffix == ".png" and path.is_file():
                payload[f"figures/{key}"] = wandb.Image(str(path), caption=path.stem)
        run.log(payload)
        for key in ("markdown", "html"):
            if key in paths and Path(paths[key]).is_file():
                run.save(str(paths[key]), base_path=str(Path(paths[key]).parent), policy="now")
        run_path = Path(run.dir).parent
    finally:
        run.finish()
    return run_path
