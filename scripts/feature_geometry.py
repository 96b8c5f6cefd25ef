"""Feature geometry of real bags and generated worlds, as the reference table of ../shared/data/README.md.

    python scripts/feature_geometry.py [BAG.h5 ...] [--real ../shared/data/real]
        [--cohort DIR ...] [--preset worlds_tiny ...] [--seed 0] [--max-slides 30]

Columns: pairwise patch cosine (mean [p5, p95]), effective rank (participation ratio of the centred
spectrum), share of variance in the top 10 components, and the mean cosine within the tumour, within
the other tissue and between them. Rows: each BAG given (tumour columns when it carries per-patch
truth), the real bags under --real when present (hancock_crop with its tumour truth, wsisum_demo),
and per dataset of each generated cohort (--cohort, or --preset generated into a temporary folder):
the mean over its first --max-slides slides, tumour = the task's lesion morphologies, other = the
background tissue (artifacts count in the overall columns only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from wsisum.data.ground_truth import (
    ARTIFACT_MORPHOLOGIES,
    BACKGROUND_MORPHOLOGIES,
    MANIFEST_LESIONS,
    MANIFEST_NAME,
    MORPHOLOGY_DATASET,
    MORPHOLOGY_NAMES_ATTR,
)
from wsisum.data.synthetic.calibration import HEADER, Geometry, average, feature_geometry, table_row

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real"


def _bag(path: Path, lesions: set[str] | None = None) -> Geometry:
    """One bag; tumour/other from its `morphology` truth when it has one."""
    with h5py.File(path, "r") as f:
        x = f["features"][()]
        if MORPHOLOGY_DATASET not in f:
            return feature_geometry(x)
        morph = f[MORPHOLOGY_DATASET][()]
        names = json.loads(f.attrs[MORPHOLOGY_NAMES_ATTR])
    if lesions is None:
        lesions = {n for n in names if n not in BACKGROUND_MORPHOLOGIES and n not in ARTIFACT_MORPHOLOGIES}
    is_lesion = np.array([n in lesions for n in names])[morph]
    is_other = np.array([n in BACKGROUND_MORPHOLOGIES for n in names])[morph]
    return feature_geometry(x, is_lesion, is_other)


def _shape(path: Path) -> tuple[int, int]:
    with h5py.File(path, "r") as f:
        return f["features"].shape


def real_rows(root: Path) -> list[str]:
    """The real bags of ../shared/data/real: hancock_crop (CONCH, UNI, tumour truth) and wsisum_demo."""
    rows = []
    crop = root / "hancock_crop"
    for enc in ("conch", "uni"):
        for h5 in sorted((crop / "h5_files" / f"hancock_{enc}").glob("*.h5")):
            truth = crop / "truth" / f"{h5.stem}.npz"
            with h5py.File(h5, "r") as f:
                x = f["features"][()]
            tumour = np.load(truth)["tumour"] if truth.exists() else None
            name = f"real hancock_crop {enc.upper()} ({x.shape[0]} x {x.shape[1]})"
            rows.append(table_row(name, feature_geometry(x, tumour)))
    for h5 in sorted((root / "wsisum_demo" / "h5_files").glob("*/*.h5")):
        with h5py.File(h5, "r") as f:
            x = f["features"][()]
        rows.append(table_row(f"real wsisum_demo {h5.stem} CONCH ({x.shape[0]} x {x.shape[1]})", feature_geometry(x)))
    return rows


def cohort_rows(root: Path, max_slides: int, label: str) -> list[str]:
    """One row per dataset of a generated cohort: the mean over its first `max_slides` slides."""
    m = json.loads((root / MANIFEST_NAME).read_text())
    rows = []
    for ds, ids in m["datasets"].items():
        lesions = set(m[MANIFEST_LESIONS][m["dataset_tasks"][ds]])
        geo = [_bag(root / "h5_files" / ds / f"{s}.h5", lesions) for s in ids[:max_slides]]
        n = [_shape(root / "h5_files" / ds / f"{s}.h5") for s in ids[:max_slides]]
        size = f"{len(geo)} slides, {int(np.mean([a for a, _ in n]))} x {n[0][1]} mean"
        rows.append(table_row(f"{label} {ds} ({size})", average(geo)))
    return rows


def _generate(preset: str, seed: int, out: Path) -> Path:
    from wsisum.data.synthetic import generate_cohort
    from wsisum.data.synthetic.preset import load_preset

    generate_cohort(out, load_preset(preset), seed=seed, progress=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bags", nargs="*", type=Path, help="bag .h5 files (features, optional morphology truth)")
    ap.add_argument("--real", type=Path, default=REAL, help="the real bags' folder (skipped when absent)")
    ap.add_argument("--cohort", type=Path, nargs="*", default=[], help="generated cohort folders")
    ap.add_argument("--preset", nargs="*", default=[], help="presets to generate into a temporary folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-slides", type=int, default=30)
    args = ap.parse_args(argv)
    rows = [table_row(str(p), _bag(p)) for p in args.bags]
    if args.real.is_dir():
        rows += real_rows(args.real)
    for c in args.cohort:
        rows += cohort_rows(c, args.max_slides, c.name)
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.preset:
            rows += cohort_rows(_generate(p, args.seed, Path(tmp) / p), args.max_slides, p)
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
