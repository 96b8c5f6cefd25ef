"""`wsisum-synth out_dir=DIR [preset=tiny|demo|large] [seed=S]`: write a synthetic cohort."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from wsisum.apps._app import hydra_app, report_input_errors
from wsisum.data.output_faults import check_writable
from wsisum.data.synthetic import generate_cohort


@report_input_errors
def synth(cfg: DictConfig) -> dict:
    preset = OmegaConf.to_container(cfg.preset, resolve=True)
    check_writable(cfg.out_dir, "cohort directory")
    manifest = generate_cohort(
        cfg.out_dir, preset, seed=int(cfg.seed), overwrite=bool(cfg.overwrite), progress=bool(cfg.progress)
    )
    table = Table(title=f"synthetic cohort '{manifest.get('preset_name', '?')}' (seed {cfg.seed}) in {cfg.out_dir}")
    table.add_column("dataset")
    table.add_column("slides", justify="right")
    for ds, ids in manifest["datasets"].items():
        table.add_row(ds, str(len(ids)))
    Console().print(table)
    return manifest


@hydra_app("synth")
def main(cfg: DictConfig) -> None:
    synth(cfg)


if __name__ == "__main__":
    main()
