"""The report's tables and figures land in an offline W&B run that `wandb sync` can upload."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from wsisum.report.wandb_export import export_to_wandb


def test_offline_run_holds_tables_and_images(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    csv = tmp_path / "results_table.csv"
    pd.DataFrame({"task": ["t"], "sampler": ["kmeans"], "auroc": [0.9]}).to_csv(csv, index=False)
    png = tmp_path / "heatmap_16_slide1.png"
    plt.plot([0, 1], [0, 1])
    plt.savefig(png)
    plt.close()
    md = tmp_path / "report.md"
    md.write_text("# report\n")
    run = export_to_wandb(tmp_path, {"results_table": csv, "heatmap_16_slide1": png, "markdown": md}, group="demo")
    assert run.name.startswith("offline-run-") and run.parent == tmp_path / "wandb"
    (record,) = run.glob("run-*.wandb")
    # W&B's service process may still be flushing the record when finish() returns on a loaded
    # machine (seen as an 8-byte file): wait for it, up to 60 s, then check what it holds
    deadline = time.monotonic() + 60
    while b"tables/results_table" not in (data := record.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"tables/results_table" in data and b"figures/heatmap_16_slide1" in data and b"demo" in data
    assert list((run / "files" / "media").rglob("*.png")) and (run / "files" / "report.md").is_file()
