"""A photo's instances, as its tiling asks: grid tiles over tissue, or nucleus-centred crops.

Every path that turns a photo into a bag (in-memory bags, frozen extraction, explanations,
uploads in the review app) goes through here, so that ``TilingConfig.instances`` means the
same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mil_cyto.data.cells import cell_instances
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig, extract_tiles, tissue_coords


def instance_coords(image: np.ndarray, tiling: TilingConfig, *, name: str = "image") -> np.ndarray:
    """The ``(N, 4)`` int32 ``x0, y0, x1, y1`` boxes of an ``(H, W, 3)`` photo's instances:
    tissue tiles on the grid (``instances="grid"``) or one crop per detected nucleus
    (``"cells"``).

    Raises:
        MilCytoError: naming ``name``: the photo is smaller than one tile, or the bag is empty.
    """
    return instance_centres(image, tiling, name=name)[1]


def instance_centres(
    image: np.ndarray, tiling: TilingConfig, *, name: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's centre ``(N, 2)`` float ``x, y`` px and box ``(N, 4)`` int32: the
    detected nucleus of a crop (``instances="cells"``; off the box centre at the photo's
    edge), the middle of a grid tile."""
    if tiling.instances == "cells":
        return cell_instances(image, tiling, name=name)
    coords = tissue_coords(image, tiling, name=name)
    return (coords[:, :2] + coords[:, 2:]) / 2.0, coords


def cut_instances(
    image: np.ndarray, tiling: TilingConfig, *, name: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """The photo's instances ``(N, 3, T, T)`` uint8 and their boxes ``(N, 4)`` int32."""
    coords = instance_coords(image, tiling, name=name)
    return extract_tiles(image, coords), coords


@dataclass
class PhotoPlan:
    """A decoded photo and the boxes of its instances (grid tiles or nucleus crops).

    ``image`` ``(H, W, 3)`` uint8; ``coords`` ``(N, 4)`` int32 ``x0, y0, x1, y1`` pixels.
    """

    row: ManifestRow
    image: np.ndarray
    coords: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


def load_photo(
    row: ManifestRow, tiling: TilingConfig, known: np.ndarray | None = None
) -> PhotoPlan:
    """Decode one photo and find its instances, grid tiles or nucleus crops as ``tiling``
    says, unless ``known`` already holds its ``(N, 4)`` boxes (found with the same tiling),
    which skips the nucleus detection (raises MilCytoError naming the file)."""
    image = load_rgb(row.image, hint=f"manifest row {row.image_id!r}")
    if known is None:
        known = instance_coords(image, tiling, name=str(row.image))
    return PhotoPlan(row, image, known)
