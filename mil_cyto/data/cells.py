"""Cell-centred instances: nuclei found with scikit-image, one square crop per nucleus.

A photo becomes a bag of crops centred on its nuclei instead of a grid, so every instance
(and every attention weight) is one cell. Crops have the tiling's ``tile_size`` and carry
``x0, y0, x1, y1`` boxes like grid tiles, so the localization metrics work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects

from mil_cyto.data.tiling import TilingConfig
from mil_cyto.errors import MilCytoError


@dataclass(frozen=True)
class NucleusConfig:
    """Nucleus detection in pixels of the photo.

    ``min_area``: smallest kept stained component (px^2); ``sigma``: Gaussian smoothing of
    the haematoxylin channel; ``min_distance``: least distance between two nuclei centres
    (px), so touching nuclei in one component are split at their density peaks;
    ``max_cells``: at most this many nuclei per photo (the densest kept), bounding the bag.
    """

    min_area: int = 20
    sigma: float = 2.0
    min_distance: int = 16
    max_cells: int = 400


def haematoxylin(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` float haematoxylin density (colour
    deconvolution, Ruifrok and Johnston 2001), the stain that marks nuclei."""
    return rgb2hed(image)[..., 0]


def detect_nuclei(image: np.ndarray, config: NucleusConfig | None = None) -> np.ndarray:
    """Nucleus centres: ``(M, 3)`` float ``x, y, density`` (smoothed haematoxylin at the
    centre), densest first.

    Stained components come from an Otsu threshold on the smoothed haematoxylin density
    (holes filled, specks under ``min_area`` dropped); within them every local density
    maximum at least ``min_distance`` px from a denser one is a nucleus, so touching or
    overlapping nuclei are counted one by one.
    """
    config = config or NucleusConfig()
    density = gaussian(haematoxylin(image), sigma=config.sigma)
    try:
        threshold = threshold_otsu(density)
    except ValueError:  # a constant photo has no nuclei
        return np.zeros((0, 3))
    mask = ndimage.binary_fill_holes(density > threshold)
    mask = remove_small_objects(mask, max_size=config.min_area - 1)
    labels, _ = ndimage.label(mask)
    peaks = peak_local_max(
        density,
        min_distance=config.min_distance,
        labels=labels,
        num_peaks=config.max_cells,
        exclude_border=False,
    )  # (M, 2) row, col; densest first
    values = density[peaks[:, 0], peaks[:, 1]]
    return np.stack([peaks[:, 1], peaks[:, 0], values], axis=1).astype(np.float64).reshape(-1, 3)


def centred_boxes(centres: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Square ``size``-px boxes centred on ``(M, 2)`` ``x, y`` points, shifted inside the photo:
    ``(M, 4)`` int32 ``x0, y0, x1, y1``."""
    half = size // 2
    x0 = np.clip(np.round(centres[:, 0]).astype(int) - half, 0, width - size)
    y0 = np.clip(np.round(centres[:, 1]).astype(int) - half, 0, height - size)
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1).astype(np.int32)


def cell_instances(
    image: np.ndarray,
    tiling: TilingConfig,
    nuclei: NucleusConfig | None = None,
    *,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """One ``tile_size`` crop per detected nucleus (densest first), without cutting it:
    the nuclei's centres ``(M, 2)`` float ``x, y`` px and the crops' boxes ``(M, 4)`` int32
    ``x0, y0, x1, y1`` (a crop at the photo's edge is shifted inside it, so its nucleus is
    off-centre).

    Raises:
        MilCytoError: the photo is smaller than one crop, or no nucleus is found.
    """
    height, width = image.shape[:2]
    size = tiling.tile_size
    if height < size or width < size:
        raise MilCytoError(
            f"{name} is {width}x{height} px, smaller than one {size}-px crop; use a smaller "
            "--tile-size or drop the photo"
        )
    found = detect_nuclei(image, nuclei)
    if len(found) == 0:
        raise MilCytoError(
            f"{name}: no nucleus found (empty bag); check the photo or use --instances grid"
        )
    return found[:, :2], centred_boxes(found[:, :2], size, height, width)
