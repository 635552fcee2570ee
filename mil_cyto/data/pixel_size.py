"""Pixel size: photos from 10x to 40x objectives are worked on at one scale.

The default tile size and the nucleus detector (:class:`~mil_cyto.data.cells.NucleusConfig`)
are in pixels, tuned on the built-in synthetic set. Every photo whose own pixel size differs
from that working size is resampled to it when read; instances are found and cut there,
and their boxes are mapped back to the photo's own pixels, in which every stored or written
coordinate is (bag stores, ``attention.h5``, localization against ``cells.csv``, overlays).

A photo's pixel size is, in order: the manifest's ``um_per_px`` column, ``--um-per-px``, the
``um_per_px`` of a synthetic set's ``synth_config.json``, or an estimate from the photos'
nucleus sizes (:func:`estimate_um_per_px`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import regionprops

from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import UM_PER_PX_LIMITS, ManifestRow
from mil_cyto.data.tiling import tissue_mask
from mil_cyto.errors import MilCytoError

WORKING_UM_PER_PX = 0.7
"""The working pixel size, micrometres per pixel: the built-in synthetic set's
(``SynthConfig.um_per_px``, ``mil_cyto.data.synthetic.config``), at which the default tile
size (64 px = 45 um) and the nucleus detector were tuned. Also the whole-slide default
(``SlideConfig.um_per_px``)."""

SAME_SCALE_TOLERANCE = 0.05
"""A photo within this relative pixel-size difference of the working size is not resampled
(5% is well inside the spread of nucleus sizes of one cell type, about +-12%)."""

NUCLEUS_DIAMETER_UM = 6.7
"""Typical diameter of a normal intermediate squamous cell nucleus, micrometres: the Bethesda
System's reference area of about 35 um^2 (Nayar and Wilbur, *The Bethesda System for
Reporting Cervical Cytology*, 3rd ed., 2015, ASC-US / LSIL criteria: nuclei 2.5-3 times that
area), d = 2 sqrt(35 / pi). Normal cells dominate a Pap smear, so the photos' typical nucleus
in pixels gives the pixel size."""

UM_PER_PX_RANGE = UM_PER_PX_LIMITS
"""Accepted pixel sizes, micrometres per pixel (as for whole-slide images)."""

SMOOTHING_PX = 1.0
"""Gaussian smoothing of the optical density before the nucleus threshold, pixels. An Otsu
threshold below a nucleus edge's midpoint widens its mask by about this much on each side,
at any pixel size (measured on synthetic sets at 0.35, 0.7 and 1.0 um/px: +1.8 to +2.0 px in
diameter), so the diameter is corrected by twice it."""

ESTIMATE_PHOTOS = 40
"""Photos sampled (evenly over the manifest) to estimate the pixel size: one photo's typical
nucleus varies by a factor of two or more (dark superficial against pale intermediate
nuclei, clusters), so the median over many: on the 160 CRIC fields, 24 photos give the
all-photo estimate within about +-9%, 48 within +-6% (5-95% of random draws); about 0.45 s
a 1376 x 1020 photo."""


def check_um_per_px(value: float, where: str) -> float:
    """``value`` as a float, or a MilCytoError naming ``where`` if it is out of range."""
    lo, hi = UM_PER_PX_RANGE
    if not lo <= float(value) <= hi:
        raise MilCytoError(
            f"{where}: pixel size {value} um/px out of range; give micrometres per pixel in "
            f"[{lo}, {hi}] (about 0.25 for a 40x objective, 1.0 for 10x)"
        )
    return float(value)


def working_factor(um_per_px: float | None) -> float:
    """Working pixels per native pixel of a photo at ``um_per_px`` (> 1: enlarged); exactly
    1.0 when the pixel size is unknown or within :data:`SAME_SCALE_TOLERANCE` of the
    working size (the photo is used as it is)."""
    if um_per_px is None:
        return 1.0
    factor = float(um_per_px) / WORKING_UM_PER_PX
    return 1.0 if abs(factor - 1.0) <= SAME_SCALE_TOLERANCE else factor


def working_shape(native_hw: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(H, W)`` of a photo of ``native_hw`` at the working scale."""
    if factor == 1.0:
        return int(native_hw[0]), int(native_hw[1])
    return max(1, round(native_hw[0] * factor)), max(1, round(native_hw[1] * factor))


def to_working(image: np.ndarray, factor: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 photo resampled by ``factor`` (Lanczos, antialiased when
    shrinking); the same array when ``factor`` is 1."""
    if factor == 1.0:
        return image
    height, width = working_shape(image.shape[:2], factor)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).copy()


def boxes_to_native(coords: np.ndarray, factor: float, native_hw: tuple[int, int]) -> np.ndarray:
    """Equal square working-scale boxes ``(N, 4)`` ``x0, y0, x1, y1`` -> boxes in the photo's
    own pixels ``(N, 4)`` int32, still equal squares (side ``round(T / factor)``), inside
    the photo. Identity when ``factor`` is 1."""
    coords = np.asarray(coords, dtype=np.int32)
    if factor == 1.0 or len(coords) == 0:
        return coords
    side = int(coords[0, 2] - coords[0, 0])
    native = max(1, min(round(side / factor), *native_hw))
    x0 = np.clip(np.round(coords[:, 0] / factor), 0, native_hw[1] - native).astype(np.int32)
    y0 = np.clip(np.round(coords[:, 1] / factor), 0, native_hw[0] - native).astype(np.int32)
    return np.stack([x0, y0, x0 + native, y0 + native], axis=1).astype(np.int32)


def boxes_to_working(
    coords: np.ndarray, factor: float, working_hw: tuple[int, int], side: int
) -> np.ndarray:
    """Inverse of :func:`boxes_to_native`: native boxes -> ``side``-px working boxes ``(N, 4)``
    int32 inside the working photo (exact when shrinking, within one working pixel when
    enlarging). Identity when ``factor`` is 1."""
    coords = np.asarray(coords, dtype=np.int32)
    if factor == 1.0 or len(coords) == 0:
        return coords
    x0 = np.clip(np.round(coords[:, 0] * factor), 0, working_hw[1] - side).astype(np.int32)
    y0 = np.clip(np.round(coords[:, 1] * factor), 0, working_hw[0] - side).astype(np.int32)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int32)


def nucleus_diameter_px(image: np.ndarray) -> tuple[float, int]:
    """The typical nucleus diameter of an ``(H, W, 3)`` uint8 photo in its own pixels, and the
    number of nucleus-like objects it came from (0: none; the diameter is then NaN).

    Scale-free: total optical density (lightly smoothed, 1 px) thresholded by Otsu within
    the stained material (:func:`~mil_cyto.data.tiling.tissue_mask`), so nuclei, the
    darkest compact objects, separate from cytoplasm and glass at any magnification; holes
    filled; compact components (solidity >= 0.85, >= 9 px) kept; the area-weighted median of
    their equivalent diameters (so specks and bacteria, small in area, count little), less
    the smoothing's widening (:data:`SMOOTHING_PX` on each side).
    """
    optical_density = (-np.log((image.astype(np.float32) + 1.0) / 256.0)).sum(-1)
    density = gaussian(optical_density, SMOOTHING_PX)
    tissue = tissue_mask(image)
    if tissue.sum() < 16:
        return float("nan"), 0
    try:
        threshold = threshold_otsu(density[tissue])
    except ValueError:
        return float("nan"), 0
    labels, _ = ndimage.label(ndimage.binary_fill_holes((density > threshold) & tissue))
    diameters, areas = [], []
    for region in regionprops(labels):
        if region.area >= 9 and region.solidity >= 0.85:
            diameters.append(region.equivalent_diameter_area)
            areas.append(region.area)
    if not diameters:
        return float("nan"), 0
    order = np.argsort(diameters)
    cumulative = np.cumsum(np.asarray(areas, dtype=np.float64)[order])
    middle = int(np.searchsorted(cumulative, cumulative[-1] / 2.0))
    widened = float(np.asarray(diameters)[order][middle])
    return max(1.0, widened - 2.0 * SMOOTHING_PX), len(diameters)


def estimate_um_per_px(
    rows: Sequence[ManifestRow], n_photos: int = ESTIMATE_PHOTOS
) -> tuple[float, dict[str, Any]]:
    """Estimate the photos' pixel size from their nuclei: the median over up to ``n_photos``
    photos (evenly spaced in manifest order) of each photo's typical nucleus diameter in
    pixels (:func:`nucleus_diameter_px`), against :data:`NUCLEUS_DIAMETER_UM`.

    Returns the estimate in micrometres per pixel and its detail (photos used, per-photo
    diameters, the reference diameter), for ``config.json``.

    Raises:
        MilCytoError: no sampled photo shows a nucleus (give ``--um-per-px``).
    """
    photos = [r for r in rows if not r.is_slide]
    if not photos:
        raise MilCytoError("no photos to estimate the pixel size from; give --um-per-px")
    picks = np.unique(np.linspace(0, len(photos) - 1, min(n_photos, len(photos))).round())
    per_photo: dict[str, float] = {}
    for index in picks.astype(int):
        row = photos[index]
        diameter, count = nucleus_diameter_px(load_rgb(row.image, hint=row.image_id))
        if count:
            per_photo[row.image_id] = round(diameter, 2)
    if not per_photo:
        raise MilCytoError(
            "no nucleus found in the sampled photos to estimate their pixel size; give "
            "--um-per-px (micrometres per pixel) or a um_per_px column in manifest.csv"
        )
    diameter = float(np.median(list(per_photo.values())))
    estimate = check_um_per_px(NUCLEUS_DIAMETER_UM / diameter, "estimated pixel size")
    detail = {
        "method": "median over photos of the area-weighted median equivalent diameter of "
        "compact dark (optical-density Otsu) objects",
        "nucleus_diameter_px": round(diameter, 2),
        "reference_nucleus_diameter_um": NUCLEUS_DIAMETER_UM,
        "photos": per_photo,
    }
    return estimate, detail


@dataclass(frozen=True)
class PixelSize:
    """The run's pixel size as ``config.json`` records it: ``um_per_px`` (micrometres per
    pixel of the photos that carry no ``um_per_px`` column value; None where every row has
    one), its ``source`` (``manifest``, ``flag``, ``synthetic``, ``estimated``), the
    working size, and the estimate's detail."""

    um_per_px: float | None
    source: str
    working_um_per_px: float = WORKING_UM_PER_PX
    from_manifest: int = 0
    estimate_detail: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "um_per_px": self.um_per_px,
            "source": self.source,
            "working_um_per_px": self.working_um_per_px,
            "rows_from_manifest": self.from_manifest,
            "estimate_detail": self.estimate_detail,
        }


def synthetic_um_per_px(folder: Path) -> float | None:
    """The ``um_per_px`` of a synthetic set's ``synth_config.json`` in ``folder``, if any."""
    path = Path(folder) / "synth_config.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("um_per_px")
    except (json.JSONDecodeError, AttributeError, OSError):
        return None
    return None if value is None else check_um_per_px(value, str(path))


def resolve_pixel_size(
    rows: Sequence[ManifestRow], flag: float | None, folder: Path
) -> tuple[list[ManifestRow], PixelSize]:
    """Every row with its pixel size set (``ManifestRow.um_per_px``): the manifest's value,
    else ``flag`` (``--um-per-px``), else the synthetic set's, else the estimate from the
    rows' photos that have none; and the record of how."""
    missing = [r for r in rows if r.um_per_px is None]
    given = len(rows) - len(missing)
    if not missing:
        return list(rows), PixelSize(None, "manifest", from_manifest=given)
    detail = None
    if flag is not None:
        value, source = check_um_per_px(flag, "--um-per-px"), "flag"
    elif (synthetic := synthetic_um_per_px(folder)) is not None:
        value, source = synthetic, "synthetic"
    else:
        value, detail = estimate_um_per_px(missing)
        source = "estimated"
    value = round(value, 4)
    filled = [r if r.um_per_px is not None else replace(r, um_per_px=value) for r in rows]
    return filled, PixelSize(value, source, from_manifest=given, estimate_detail=detail)
