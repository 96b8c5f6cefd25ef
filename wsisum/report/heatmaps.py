"""Selection heatmaps drawn from coords alone (no WSI reader): which patches each summary kept.

One PNG per slide, one panel per sampler at one budget. Every patch of the full bag is a faint
square on the patch grid (light red where the ground truth says lesion, synthetic cohorts only,
else grey); the kept patches are solid squares, coloured by the summary's per-patch `scores`
where it has them (its own colour scale per panel), and outlined in red where they are lesion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsisum.data.atomic import atomic_path
from wsisum.data.bags import read_bag
from wsisum.errors import InputError
from wsisum.report.lesions import bag_morphology_names, lesion_mask, lesion_names
from wsisum.report.rundir import RunDir, SummarySet, read_source_array
from wsisum.run_layout import SUMMARIES_DIR

TISSUE = (0.85, 0.85, 0.85)
LESION = (0.98, 0.70, 0.70)
KEPT = "#1d4ed8"
KEPT_LESION_EDGE = "#dc2626"
SMALL_LESION_CELLS = 25  # lesions this small are also circled: one faint cell is invisible on a big grid
METHOD_FIRST = "wsisum"  # the method's own panel comes first

MAX_PANELS_PER_ROW = 4  # heatmap panels per row of a figure


@dataclass
class Panel:
    sampler: str
    indices: np.ndarray | None  # into the source bag; None when only the summary coords are known
    coords: np.ndarray  # (K, 2) level-0 coords of the kept patches
    scores: np.ndarray | None


@dataclass
class SlideView:
    slide_id: str
    dataset: str
    label: str | None
    coords: np.ndarray | None  # (N, 2) of the full bag; None when the cohort is not at hand
    stride: int | None
    lesion: np.ndarray | None  # (N,) bool ground truth, synthetic cohorts only
    panels: list[Panel]


def heatmap_budget(run: RunDir, budget: int | None = None) -> int | None:
    """The budget whose heatmaps are drawn: the given one, else the smallest one most samplers share."""
    budgets: dict[int, int] = {}
    for s in run.summary_sets:
        if s.budget is not None:  # budget=auto sets have no one budget to draw side by side
            budgets[s.budget] = budgets.get(s.budget, 0) + 1
    if budget is not None:
        if budget not in budgets:
            raise InputError(run.root / SUMMARIES_DIR, f"no summaries at budget {budget} (found {sorted(budgets)})")
        return int(budget)
    if not budgets:
        return None
    return min(budgets, key=lambda b: (-budgets[b], b))


def sampler_order(sets: Sequence[SummarySet]) -> list[SummarySet]:
    return sorted(sets, key=lambda s: (s.sampler != METHOD_FIRST, s.sampler))


def _lesion_of(run: RunDir, f) -> np.ndarray | None:
    src = run.source_bag(f)
    if src is None or not src.has_morphology:
        return None
    naming = lesion_names(run.manifest, bag_morphology_names(src.attrs))
    return None if naming is None else lesion_mask(run.morphology(src), *naming)


def choose_slides(run: RunDir, sets: Sequence[SummarySet], n: int) -> list[str]:
    """Up to `n` slides summarized by every set, one per dataset in turn: on synthetic cohorts the
    lesion-positive slide with the smallest lesion (the hard case), else the median-sized slide;
    slides with more patches than the budget first (otherwise every sampler keeps all of them)."""
    if not sets or n <= 0:
        return []
    common = set.intersection(*(set(s.files) for s in sets))
    budget = sets[0].budget
    by_ds: dict[str, list[tuple[tuple, str]]] = {}
    for sid in sorted(common):
        f = sets[0].files[sid]
        src = run.source_bag(f)
        n_patches = src.n_patches if src is not None else (f.n_source or f.n_kept)
        lesion = _lesion_of(run, f)
        n_lesion = None if lesion is None else int(lesion.sum())
        by_ds.setdefault(f.dataset, []).append(((n_patches, n_lesion), sid))
    ranked: dict[str, list[str]] = {}
    for ds, items in by_ds.items():
        sizes = sorted(k[0] for k, _ in items)
        median = sizes[len(sizes) // 2]

        def rank(item: tuple[tuple, str], median: int = median) -> tuple:
            (n_patches, n_lesion), sid = item
            too_small = n_patches <= budget
            if n_lesion is not None:
                return (n_lesion == 0, too_small, n_lesion, sid)
            return (too_small, abs(n_patches - median), sid)

        ranked[ds] = [sid for _, sid in sorted(items, key=rank)]
    chosen: list[str] = []
    while len(chosen) < n and any(ranked.values()):
        for ds in sorted(ranked):
            if ranked[ds] and len(chosen) < n:
                chosen.append(ranked[ds].pop(0))
    return chosen


def slide_view(run: RunDir, sets: Sequence[SummarySet], slide_id: str) -> SlideView:
    """Full-bag grid, ground truth and every set's kept patches of one slide (checked against each other)."""
    f0 = sets[0].files[slide_id]
    src = run.source_bag(f0)
    coords = None
    if src is not None and src.has_coords:
        coords = read_source_array(src.path, "coords")
    panels = []
    for s in sampler_order(sets):
        f = s.files[slide_id]
        bag = read_bag(f.path, check_values=False)
        idx = bag.extras.get("indices")
        idx = None if idx is None else np.asarray(idx, dtype=np.int64)
        scores = bag.extras.get("scores")
        scores = None if scores is None else np.asarray(scores, dtype=float)
        if coords is not None and idx is not None:
            if idx.size and (idx.min() < 0 or idx.max() >= len(coords)):
                raise InputError(f.path, f"indices outside the source bag {src.path} ({len(coords)} patches)")
            kept = coords[idx]
            if bag.coords is not None and not np.array_equal(bag.coords, kept):
                raise InputError(
                    f.path, f"coords differ from the source bag {src.path} at its indices (stale summary?)"
                )
        elif bag.coords is not None:
            kept = np.asarray(bag.coords)
        else:
            raise InputError(f.path, "no coords and no source bag with coords: nothing to place on a grid")
        panels.append(Panel(s.sampler, idx if coords is not None else None, kept, scores))
    label = None if src is None else src.attrs.get("label")
    stride = None if src is None else src.patch_size_level0
    return SlideView(
        slide_id, f0.dataset, None if label is None else str(label), coords, stride, _lesion_of(run, f0), panels
    )


def grid_stride(coords: np.ndarray) -> int:
    """The patch grid step in coords units: the smallest positive gap between distinct x or y values."""
    gaps = []
    for axis in (0, 1):
        u = np.unique(coords[:, axis])
        d = np.diff(u)
        d = d[d > 0]
        if d.size:
            gaps.append(int(d.min()))
    return max(1, min(gaps)) if gaps else 1


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "slide"


def lesion_rings(cells: np.ndarray, min_radius: float, join: float = 4.0) -> list[tuple[tuple[float, float], float]]:
    """(centre, radius) of one ring per group of lesion cells (cells within `join` cells of a group's
    first cell join it), each ring enclosing its cells with a margin."""
    groups: list[list[np.ndarray]] = []
    for c in np.asarray(cells, dtype=float):
        for grp in groups:
            if np.hypot(*(c - grp[0])) <= join:
                grp.append(c)
                break
        else:
            groups.append([c])
    rings = []
    for grp in groups:
        pts = np.stack(grp)
        centre = pts.mean(axis=0)
        radius = float(np.hypot(*(pts - centre).T).max()) + 1.0
        rings.append(((float(centre[0]), float(centre[1])), max(radius, min_radius)))
    return rings


@dataclass
class SlideGrid:
    """A slide's patch grid as an image: tissue (and ground-truth lesion) cells on white, and the
    size of the square drawn for a kept patch."""

    origin: np.ndarray
    stride: int
    width: int
    height: int
    image: np.ndarray
    all_cells: np.ndarray
    side: float

    def cells(self, xy: np.ndarray) -> np.ndarray:
        return np.rint((np.asarray(xy, dtype=float) - self.origin) / self.stride).astype(np.int64)


def slide_grid(view: SlideView) -> SlideGrid:
    every = view.coords if view.coords is not None else np.concatenate([p.coords for p in view.panels])
    stride = view.stride or grid_stride(every)
    origin = every.min(axis=0)
    g_all = np.rint((np.asarray(every, dtype=float) - origin) / stride).astype(np.int64)
    w, h = int(g_all[:, 0].max()) + 1, int(g_all[:, 1].max()) + 1
    img = np.ones((h, w, 3))
    if view.coords is not None:
        img[g_all[:, 1], g_all[:, 0]] = TISSUE
        if view.lesion is not None:
            les = g_all[view.lesion]
            img[les[:, 1], les[:, 0]] = LESION
    side = max(1.0, max(w, h) / 70)  # kept squares stay visible on large grids
    return SlideGrid(origin, stride, w, h, img, g_all, side)


def score_faces(fig: Any, ax: Any, scores: np.ndarray) -> np.ndarray:
    """Viridis colours of the kept patches' scores, with a colour bar beside the panel."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = float(np.nanmin(scores)), float(np.nanmax(scores))
    if not math.isfinite(lo) or hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    norm = Normalize(lo, hi)
    cax = ax.inset_axes((1.02, 0.0, 0.035, 1.0))
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), cax=cax)
    cbar.set_label("score", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return plt.get_cmap("viridis")(norm(scores))


def draw_panel(fig: Any, ax: Any, view: SlideView, panel: Panel, grid: SlideGrid, circle_lesions: bool) -> bool:
    """One sampler's kept patches over the slide; True when the squares are coloured by score."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Rectangle

    w, h, side = grid.width, grid.height, grid.side
    ax.imshow(grid.image, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    g = grid.cells(panel.coords)
    lesion_kept = (
        view.lesion[panel.indices] if view.lesion is not None and panel.indices is not None else np.zeros(len(g), bool)
    )
    rects = [Rectangle((x - side / 2, y - side / 2), side, side) for x, y in g]
    scored = panel.scores is not None and len(panel.scores) == len(g)
    faces = score_faces(fig, ax, panel.scores) if scored else [KEPT] * len(g)
    edges = [KEPT_LESION_EDGE if les else "black" for les in lesion_kept]
    widths = [1.6 if les else 0.5 for les in lesion_kept]
    ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=widths))
    if circle_lesions:
        rings = [Circle(c, r) for c, r in lesion_rings(grid.all_cells[view.lesion], max(1.5, 1.6 * side))]
        ax.add_collection(PatchCollection(rings, facecolors="none", edgecolors=KEPT_LESION_EDGE, linewidths=1.0))
    ax.set_xlim(-0.5 - side, w - 0.5 + side)
    ax.set_ylim(h - 0.5 + side, -0.5 - side)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    n_src = len(view.coords) if view.coords is not None else None
    title = f"{panel.sampler}: {len(g)}" + (f" of {n_src} kept" if n_src else " kept")
    if view.lesion is not None and panel.indices is not None:
        title += f"\nlesion patches kept: {int(lesion_kept.sum())} of {int(view.lesion.sum())}"
    ax.set_title(title, fontsize=9)
    return scored


def legend_handles(view: SlideView, circle_lesions: bool, n_lesion: int, any_scores: bool) -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if view.coords is not None:
        handles.append(Patch(facecolor=TISSUE, label="patch of the slide"))
        if view.lesion is not None:
            handles.append(Patch(facecolor=LESION, label="lesion (ground truth)"))
        if circle_lesions:
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="",
                    markerfacecolor="none",
                    markeredgecolor=KEPT_LESION_EDGE,
                    markersize=9,
                    label=f"small lesion ({n_lesion} patch{'es' if n_lesion > 1 else ''}), circled",
                )
            )
    handles.append(
        Patch(facecolor=KEPT, edgecolor="black", label="kept" + (" (colour = score where shown)" if any_scores else ""))
    )
    if view.lesion is not None:
        handles.append(Patch(facecolor="white", edgecolor=KEPT_LESION_EDGE, linewidth=1.6, label="kept lesion patch"))
    return handles


def draw_heatmap(view: SlideView, budget: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = slide_grid(view)
    n_panels = len(view.panels)
    panel_w = 4.2
    panel_h = min(max(panel_w * (grid.height + 2 * grid.side) / (grid.width + 2 * grid.side), 1.5), 6.5)
    # at most 4 panels a row: 8 samplers in one row made a 3,762 px strip where each slide was a few
    # pixels high at page width
    ncols = min(n_panels, MAX_PANELS_PER_ROW)
    nrows = -(-n_panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols + 0.6, panel_h * nrows + 1.5), squeeze=False)
    n_lesion = 0 if view.lesion is None or view.coords is None else int(view.lesion.sum())
    circle_lesions = 0 < n_lesion <= SMALL_LESION_CELLS
    any_scores = False
    for ax, panel in zip(axes.ravel(), view.panels):
        any_scores |= draw_panel(fig, ax, view, panel, grid, circle_lesions)
    for ax in axes.ravel()[n_panels:]:
        ax.set_axis_off()
    label = f", label {view.label}" if view.label else ""
    fig.suptitle(f"{view.slide_id} ({view.dataset}{label}), budget {budget}", fontsize=11)
    handles = legend_handles(view, circle_lesions, n_lesion, any_scores)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 / nrows, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_heatmaps(run: RunDir, out_dir: Path, n_slides: int, budget: int | None) -> list[Path]:
    """One figure per chosen slide, one panel per sampler at `budget` (see `heatmap_budget`)."""
    if budget is None:
        return []
    sets = sampler_order([s for s in run.summary_sets if s.budget == budget])
    written = []
    for sid in choose_slides(run, sets, n_slides):
        view = slide_view(run, sets, sid)
        written.append(draw_heatmap(view, budget, out_dir / f"heatmap_{budget}_{safe_name(sid)}.png"))
    return written
