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
from mil_cyto.data.pixel_size import boxes_to_native, boxes_to_working, to_working, working_factor
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
    """A decoded photo at the working scale and the boxes of its instances (grid tiles or
    nucleus crops), for cutting them.

    ``image`` ``(h, w, 3)`` uint8 at the working pixel size; ``coords`` ``(N, 4)`` int32
    ``x0, y0, x1, y1`` in its pixels; ``factor``: working pixels per pixel of the photo
    (1.0: the photo as read, :mod:`mil_cyto.data.pixel_size`); ``native_size``: the photo's
    own ``(H, W)`` (None: ``image``'s).
    """

    row: ManifestRow
    image: np.ndarray
    coords: np.ndarray
    factor: float = 1.0
    native_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The photo's own ``(H, W)``, in which :attr:`native_coords` are."""
        if self.native_size is not None:
            return int(self.native_size[0]), int(self.native_size[1])
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def native_coords(self) -> np.ndarray:
        """``coords`` in the photo's own pixels ``(N, 4)`` int32 (what stores and outputs
        keep)."""
        return boxes_to_native(self.coords, self.factor, self.size)


def load_photo(
    row: ManifestRow, tiling: TilingConfig, known: np.ndarray | None = None
) -> PhotoPlan:
    """Decode one photo, resample it to the working pixel size when ``row.um_per_px``
    differs, and find its instances there, grid tiles or nucleus crops as ``tiling`` says,
    unless ``known`` already holds its ``(N, 4)`` boxes in the photo's own pixels (found
    with the same tiling), which skips the nucleus detection (raises MilCytoError naming the
    file)."""
    native = load_rgb(row.image, hint=f"manifest row {row.image_id!r}")
    factor = working_factor(row.um_per_px)
    image = to_working(native, factor)
    if known is None:
        coords = instance_coords(image, tiling, name=str(row.image))
    else:
        coords = boxes_to_working(known, factor, image.shape[:2], tiling.tile_size)
    return PhotoPlan(row, image, coords, factor, native.shape[:2])


def load_instances(
    row: ManifestRow, tiling: TilingConfig
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """One photo's instances cut at the working scale ``(N, 3, T, T)`` uint8, their boxes in
    the photo's own pixels ``(N, 4)`` int32, and its own ``(H, W)``."""
    plan = load_photo(row, tiling)
    return extract_tiles(plan.image, plan.coords), plan.native_coords, plan.size
