"""A photo becomes a bag: native-resolution tiles on a grid, background glass dropped."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu

from mil_cyto.errors import MilCytoError


@dataclass(frozen=True)
class TilingConfig:
    """Grid tiling in pixels of the photo; ``min_tissue`` is a fraction of a tile's area.

    ``instances``: ``grid`` (tiles on a ``stride`` grid) or ``cells`` (one ``tile_size`` crop
    centred on each detected nucleus, see :mod:`mil_cyto.data.cells`; stride and min_tissue
    unused).
    """

    tile_size: int = 64
    stride: int = 64
    min_tissue: float = 0.05
    instances: str = "grid"

    def __post_init__(self) -> None:
        if self.tile_size < 8 or self.stride < 1:
            raise MilCytoError(
                f"tile size {self.tile_size} / stride {self.stride} too small; use >= 8 / >= 1"
            )
        if not 0.0 <= self.min_tissue <= 1.0:
            raise MilCytoError(f"min_tissue {self.min_tissue} must lie in [0, 1]")
        if self.instances not in ("grid", "cells"):
            raise MilCytoError(f"instances {self.instances!r}: use grid or cells")


GREY_WEIGHTS_256 = (54, 183, 19)
"""Luminance weights of ``skimage.color.rgb2gray`` (0.2125, 0.7154, 0.0721) in 1/256 steps."""


def grey_levels(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) -> ``(H, W)`` uint8 luminance, 0-255.

    Integer arithmetic on 8-bit levels, with ``rgb2gray``'s weights (which the tissue search
    used before, in float64).
    """
    if image.ndim == 2:
        return image.astype(np.uint8, copy=False)
    r, g, b = (image[..., c].astype(np.uint16) for c in range(3))
    wr, wg, wb = GREY_WEIGHTS_256
    return ((r * wr + g * wg + b * wb + 128) >> 8).astype(np.uint8)


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)`` mask of stained material (cells), False on bright empty glass.

    Otsu on the grey level, with the threshold capped so a photo that is almost all glass (or
    almost all cells) still separates glass, which is near white, from stain. Both the
    threshold and the cap (the 95th percentile of grey, the glass) come from one 256-level
    histogram of the 8-bit grey image, so the search runs in ~1.4 ms per 600 x 800 photo on
    the decoding threads instead of ~6.5 ms in float64 (``rgb2gray``, ``np.percentile``,
    ``threshold_otsu`` on the image); the masks differ on ~0.4% of pixels (grey rounded to
    8 bits; tested against the float64 version; ``benchmarks/tissue_search.py``).
    """
    grey = grey_levels(image)
    return open_cross(grey <= tissue_threshold(grey))


def tissue_threshold(grey: np.ndarray) -> float:
    """The grey level at or below which :func:`tissue_mask` counts a pixel as stain, from an
    ``(H, W)`` uint8 grey image (also applied to a whole slide from its overview, so that
    every chunk of the slide is judged by one threshold)."""
    counts = np.bincount(grey.ravel(), minlength=256)
    background = int(np.searchsorted(np.cumsum(counts), 0.95 * grey.size))
    present = np.flatnonzero(counts)
    if len(present) < 2:  # constant image
        threshold = float(background)
    else:
        lo, hi = int(present[0]), int(present[-1])
        threshold = float(threshold_otsu(hist=(counts[lo : hi + 1], np.arange(lo, hi + 1))))
    return min(threshold, background - 0.03 * 255)


def open_cross(mask: np.ndarray) -> np.ndarray:
    """Binary opening of a ``(H, W)`` bool mask by the 3x3 cross (``disk(1)``), pixels
    outside the image counting as background: equal to
    ``scipy.ndimage.binary_opening(mask, structure=skimage.morphology.disk(1))`` (tested).

    Written with NumPy slices because it runs for every photo on the decoding threads:
    scipy's version took 12-23 ms of a 600 x 800 photo's ~36 ms of tissue detection on
    this project's 2-core machine; this takes ~0.6 ms (decoding side 33-38 -> 46-50
    photos/s there, docs/performance.md).
    """
    eroded = mask.copy()
    eroded[1:] &= mask[:-1]
    eroded[:-1] &= mask[1:]
    eroded[:, 1:] &= mask[:, :-1]
    eroded[:, :-1] &= mask[:, 1:]
    eroded[[0, -1]] = False
    eroded[:, [0, -1]] = False
    opened = eroded.copy()
    opened[1:] |= eroded[:-1]
    opened[:-1] |= eroded[1:]
    opened[:, 1:] |= eroded[:, :-1]
    opened[:, :-1] |= eroded[:, 1:]
    return opened


def _starts(length: int, size: int, stride: int) -> np.ndarray:
    """Grid starts along one axis; a last start flush with the edge covers any remainder."""
    starts = np.arange(0, length - size + 1, stride)
    if starts[-1] + size < length:
        starts = np.append(starts, length - size)
    return starts


def grid_coords(height: int, width: int, config: TilingConfig) -> np.ndarray:
    """Grid tiles covering the whole photo, as ``(N, 4)`` int ``x0, y0, x1, y1``.

    Tiles lie on a ``stride`` grid; where the photo does not divide evenly, one more row or
    column is placed flush with the far edge (overlapping its neighbour) so no border is lost.
    """
    size, stride = config.tile_size, config.stride
    yy, xx = np.meshgrid(_starts(height, size, stride), _starts(width, size, stride), indexing="ij")
    x0, y0 = xx.ravel(), yy.ravel()
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1).astype(np.int32)


def box_sums(values: np.ndarray, coords: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Sum of ``values`` ``(H, W)`` inside each ``(N, 4)`` box ``x0, y0, x1, y1``: ``(N,)``,
    from an integral image accumulated in ``dtype`` (two NumPy cumulative sums)."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=dtype)
    np.cumsum(np.cumsum(values, axis=0, dtype=dtype), axis=1, out=table[1:, 1:])
    x0, y0, x1, y1 = np.asarray(coords, dtype=np.int64).T
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


def tissue_fraction(mask: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Fraction of each tile's pixels that are tissue, ``(N,)`` float in [0, 1].

    Box sums of 32-bit counts (:func:`box_sums`: ~2 ms for a 600 x 800 photo against ~5.5 ms
    for skimage's ``integral_image`` in int64, on the decoding side of every photo; 64-bit
    counts for masks of 2**31 pixels or more).
    """
    total = box_sums(mask, coords, np.int32 if mask.size < 2**31 else np.int64)
    x0, y0, x1, y1 = np.asarray(coords, dtype=np.int64).T
    return total / ((x1 - x0) * (y1 - y0))


def paint_tiles(size_hw: tuple[int, int], coords: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-tile values ``(N,)``, or per-tile pixel maps ``(N, T, T)``, painted into an
    ``(H, W)`` float64 map: the mean where tiles overlap, NaN where no tile lies."""
    total = np.zeros(size_hw)
    count = np.zeros(size_hw)
    for (x0, y0, x1, y1), v in zip(coords, values, strict=True):
        total[y0:y1, x0:x1] += v
        count[y0:y1, x0:x1] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def tile_photo(
    image: np.ndarray, config: TilingConfig, *, name: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Cut an ``(H, W, 3)`` uint8 photo into tissue tiles.

    Returns:
        tiles: ``(N, 3, T, T)`` uint8, channels first, T = ``config.tile_size``.
        coords: ``(N, 4)`` int32 boxes ``x0, y0, x1, y1`` in the photo's pixels.

    Raises:
        MilCytoError: the photo is smaller than one tile, or no tile holds tissue.
    """
    coords = tissue_coords(image, config, name=name)
    return extract_tiles(image, coords), coords


def tissue_coords(image: np.ndarray, config: TilingConfig, *, name: str = "image") -> np.ndarray:
    """The boxes :func:`tile_photo` keeps, ``(N, 4)`` int32, without cutting the tiles (so a
    large photo's tiles can be cut a batch at a time with :func:`extract_tiles`)."""
    height, width = image.shape[:2]
    if height < config.tile_size or width < config.tile_size:
        raise MilCytoError(
            f"{name} is {width}x{height} px, smaller than one {config.tile_size}-px tile; "
            "use a smaller --tile-size or drop the photo"
        )
    coords = grid_coords(height, width, config)
    keep = tissue_fraction(tissue_mask(image), coords) >= config.min_tissue
    if not keep.any():
        raise MilCytoError(
            f"{name}: no tile holds >= {config.min_tissue:.0%} tissue (empty bag); "
            "check the photo or lower --min-tissue"
        )
    return coords[keep]


def extract_tiles(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Crop ``coords`` (equal-size boxes) from ``(H, W, 3)``; returns ``(N, 3, T, T)`` uint8."""
    size = int(coords[0, 2] - coords[0, 0])
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(0, 1))
    # windows: (H - T + 1, W - T + 1, 3, T, T)
    return np.ascontiguousarray(windows[coords[:, 1], coords[:, 0]])
