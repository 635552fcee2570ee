"""Tile scores and per-tile pixel maps -> heatmaps in the photo's pixels, and PNG overlays."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy.stats import rankdata
from skimage.measure import block_reduce

from mil_cyto.data.tiling import paint_tiles
from mil_cyto.errors import MilCytoError
from mil_cyto.reporting import save_figure

NORMALISATIONS = ("rank", "minmax", "none")


def normalise(values: np.ndarray, how: str = "rank") -> np.ndarray:
    """Scale finite values to [0, 1] for display; NaN stays NaN; same shape, float32.

    ``rank``: the share of values below each (a few hot spots stay readable however
    peaked the raw scores are); ``minmax``: linear from the minimum to the maximum;
    ``none``: unchanged.
    """
    if how not in NORMALISATIONS:
        raise MilCytoError(f"normalisation {how!r}: use one of {', '.join(NORMALISATIONS)}")
    out = np.asarray(values, dtype=np.float64).copy()
    finite = np.isfinite(out)
    if how == "none" or not finite.any():
        return out.astype(np.float32)
    v = out[finite]
    if how == "rank":
        out[finite] = (rankdata(v, method="average") - 1) / max(v.size - 1, 1)
    else:
        span = v.max() - v.min()
        out[finite] = (v - v.min()) / span if span > 0 else 0.0
    return out.astype(np.float32)


def tile_heatmap(
    size_hw: tuple[int, int], coords: np.ndarray, tile_scores: np.ndarray, how: str = "none"
) -> np.ndarray:
    """``(N,)`` tile scores, normalised over the tiles, painted into ``(H, W)`` float32."""
    return paint_tiles(size_hw, coords, normalise(tile_scores, how)).astype(np.float32)


def pixel_heatmap(
    size_hw: tuple[int, int], coords: np.ndarray, pixel_maps: np.ndarray, how: str = "none"
) -> np.ndarray:
    """``(N, T, T)`` per-tile pixel maps painted into ``(H, W)`` float32, then normalised."""
    return normalise(paint_tiles(size_hw, coords, pixel_maps), how)


def downsample(heat: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor`` x ``factor`` pixels (NaN ignored), float16 for storage."""
    if factor <= 1:
        return heat.astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (glass) stay NaN
        small = block_reduce(heat, (factor, factor), np.nanmean, cval=np.nan)
    return small.astype(np.float16)


def save_overlay(
    path: Path,
    photo: np.ndarray,
    panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
    truth_boxes: np.ndarray | None = None,
    *,
    title: str = "",
    how: str = "rank",
) -> None:
    """One PNG: the photo, then one overlay per map.

    ``photo`` ``(H, W, 3)`` uint8; each panel is ``(name, heat (H, W) raw, detections
    (K, 4) boxes or None)``; heat is normalised with ``how`` for display. Annotated
    atypical cells (``truth_boxes``, never used in training) are drawn in cyan, detections
    in yellow.
    """
    n = len(panels) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), dpi=90)
    axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.ravel())
    flat[0].imshow(photo)
    flat[0].set_title(title or "photo", fontsize=7)
    for ax, (name, heat, dets) in zip(flat[1:], panels, strict=False):
        ax.imshow(photo)
        ax.imshow(normalise(heat, how), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"{name} ({how})", fontsize=8)
        for x0, y0, x1, y1 in dets if dets is not None else []:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
    for ax in flat[: len(panels) + 1]:
        for x0, y0, x1, y1 in truth_boxes if truth_boxes is not None else []:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=0.8))
    for ax in flat:
        ax.set_axis_off()
    save_figure(fig, path)
