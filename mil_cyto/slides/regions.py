"""Cell-rich regions of a slide, found on a low-resolution overview.

Glass is near white; anything noticeably darker in the overview (averaged over
``overview_um_per_px`` pixels, so noise is low) is stained material. The non-glass mask is
cleaned with scikit-image (specks under ``min_region_um2`` removed, holes filled) and grown
by ``region_margin_um`` so cells on a region's rim are not cut off. Only working pixels under
the mask are ever read at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, remove_small_objects

from mil_cyto.data.tiling import grey_levels, tissue_threshold
from mil_cyto.slides.config import SlideConfig
from mil_cyto.slides.reader import SlideReader
from mil_cyto.slides.resolution import choose_level, read_downsampled

GLASS_MARGIN = 0.03 * 255
"""Grey levels below the glass level that count as stain in the overview (the photos'
tissue test caps its threshold by the same margin)."""

GLASS_PERCENTILE = 95.0
"""The glass level: this percentile of the overview's grey levels (a slide is mostly glass)."""


@dataclass(frozen=True)
class RegionMap:
    """The overview mask ``(h, w)`` bool, ``scale``: working pixels per overview pixel, and
    ``threshold``: the photos' tissue threshold (grey level) for the whole slide, from the
    overview (:func:`~mil_cyto.data.tiling.tissue_threshold`)."""

    mask: np.ndarray
    scale: float
    threshold: float
    _table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
        object.__setattr__(self, "_table", table)  # the mask's integral image, built once

    @property
    def fraction(self) -> float:
        """Share of the slide's area kept for reading."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def overlaps(self, coords: np.ndarray) -> np.ndarray:
        """For working-pixel boxes ``(N, 4)`` ``x0, y0, x1, y1``: ``(N,)`` bool, True where
        the box touches the mask."""
        if len(coords) == 0:
            return np.zeros(0, dtype=bool)
        h, w = self.mask.shape
        boxes = np.asarray(coords, dtype=np.float64) / self.scale
        x0 = np.clip(np.floor(boxes[:, 0]), 0, w).astype(np.int64)
        y0 = np.clip(np.floor(boxes[:, 1]), 0, h).astype(np.int64)
        x1 = np.clip(np.ceil(boxes[:, 2]), 0, w).astype(np.int64)
        y1 = np.clip(np.ceil(boxes[:, 3]), 0, h).astype(np.int64)
        x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
        t = self._table
        return (t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]) > 0

    def clip(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        """The part of a working-pixel box ``x0, y0, x1, y1`` that holds mask pixels (the
        bounding box of the mask inside it, in working pixels), or None where it holds none."""
        x0, y0, x1, y1 = box
        h, w = self.mask.shape
        c0, r0 = max(0, int(x0 // self.scale)), max(0, int(y0 // self.scale))
        c1, r1 = min(w, int(-(-x1 // self.scale))), min(h, int(-(-y1 // self.scale)))
        sub = self.mask[r0:r1, c0:c1]
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        if len(rows) == 0:
            return None
        return (
            max(x0, int((c0 + cols[0]) * self.scale)),
            max(y0, int((r0 + rows[0]) * self.scale)),
            min(x1, int(np.ceil((c0 + cols[-1] + 1) * self.scale))),
            min(y1, int(np.ceil((r0 + rows[-1] + 1) * self.scale))),
        )

    def contains(self, points: np.ndarray) -> np.ndarray:
        """For working-pixel points ``(N, 2)`` ``x, y``: ``(N,)`` bool, True on the mask."""
        h, w = self.mask.shape
        cols = np.clip((np.asarray(points[:, 0]) / self.scale).astype(np.int64), 0, w - 1)
        rows = np.clip((np.asarray(points[:, 1]) / self.scale).astype(np.int64), 0, h - 1)
        return self.mask[rows, cols]


def stain_mask(overview: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 overview -> ``(h, w)`` bool: darker than glass by
    :data:`GLASS_MARGIN` grey levels."""
    grey = grey_levels(overview)
    glass = float(np.percentile(grey, GLASS_PERCENTILE))
    return grey <= glass - GLASS_MARGIN


def find_regions(reader: SlideReader, config: SlideConfig) -> RegionMap:
    """The slide's cell-rich regions, from the coarsest level at least as fine as
    ``config.overview_um_per_px`` (read in strips, resampled to exactly that pixel size)."""
    choice = choose_level(reader, config.overview_um_per_px, config.tolerance)
    overview = read_downsampled(reader, choice)
    um = config.overview_um_per_px
    mask = stain_mask(overview)
    threshold = tissue_threshold(grey_levels(overview))
    mask = ndimage.binary_fill_holes(mask)
    smallest = int(config.min_region_um2 / (um * um))
    if smallest > 1:
        mask = remove_small_objects(mask, max_size=smallest - 1)
    radius = int(round(config.region_margin_um / um))
    if radius > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, structure=disk(radius))
    return RegionMap(np.asarray(mask, dtype=bool), um / config.um_per_px, threshold)
