"""Whole-slide images behind one interface: levels, level-0 pixel size, region reads.

A reader is created by name from :data:`READERS` (``tiffslide``: pyramidal TIFF, Aperio SVS,
Hamamatsu NDPI and other TIFF-based formats, pure Python from the package registry; a second
backend such as OpenSlide registers beside it). Reads are lazy: only the tiles a region
touches are decoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mil_cyto.errors import MilCytoError
from mil_cyto.registry import Registry

SLIDE_SUFFIXES: tuple[str, ...] = (".svs", ".ndpi", ".tif", ".tiff")
"""File suffixes that may hold a whole-slide image (``.tif`` / ``.tiff`` only if pyramidal)."""

ALWAYS_SLIDES: tuple[str, ...] = (".svs", ".ndpi")
"""Suffixes that are slides whatever their content (a bad one is an error, never a photo)."""


class SlideReader(Protocol):
    """An open slide. Levels are ordered finest first; level 0 is the scan's resolution.

    ``level_dimensions``: ``(width, height)`` px per level; ``level_downsamples``: level-0
    pixels per level pixel; ``mpp``: level-0 micrometres per pixel, ``(x, y)``, or None when
    the file does not record it.
    """

    path: Path
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """The region at ``(x, y)`` of ``width`` x ``height`` pixels of ``level`` (in that
        level's pixels) as ``(height, width, 3)`` uint8 RGB; outside the slide is white."""
        ...

    def close(self) -> None: ...


READERS: Registry[SlideReader] = Registry("slide reader")


def not_a_slide(path: Path, detail: str) -> MilCytoError:
    """The one message for a file that cannot be read as a whole-slide image."""
    return MilCytoError(
        f"{path} is not a readable whole-slide image ({detail}); give a pyramidal TIFF, SVS "
        "or NDPI file, or a photo (PNG/JPEG/TIFF) with a suffix other than .svs/.ndpi"
    )


class TiffSlideReader:
    """:class:`SlideReader` on ``tiffslide`` (tifffile + zarr; thread-safe reads)."""

    def __init__(self, path: Path) -> None:
        import tiffslide
        from tifffile import TiffFileError

        self.path = Path(path)
        if not self.path.is_file():
            raise MilCytoError(f"slide {self.path} not found; fix the path or remove its row")
        try:
            self._slide = tiffslide.TiffSlide(self.path)
            props = self._slide.properties
            self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
            axes = str(props.get("tiffslide.series-axes", ""))
        except (TiffFileError, NotImplementedError, KeyError, ValueError, OSError) as err:
            raise not_a_slide(self.path, f"{type(err).__name__}: {err}") from None
        if axes not in ("YXS", "YX", "CYX"):
            raise not_a_slide(self.path, f"image axes {axes!r}")
        mpp_x, mpp_y = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        self.mpp = _positive_pair(mpp_x, mpp_y)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        base = (self._level0(x, level), self._level0(y, level))
        region = self._slide.read_region(base, level, (width, height), as_array=True)
        region = np.asarray(region)
        if region.dtype != np.uint8:
            top = float(region.max()) or 1.0
            region = (region.astype(np.float64) / top * 255).astype(np.uint8)
        if region.shape[2] == 1:
            region = np.repeat(region, 3, axis=2)
        elif region.shape[2] == 4:  # RGBA: composite on white glass
            alpha = region[..., 3:].astype(np.uint16)
            region = ((region[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        return _white_outside(region[..., :3], level, x, y, self.level_dimensions)

    def _level0(self, coordinate: int, level: int) -> int:
        """The level-0 coordinate that tiffslide maps back to ``coordinate`` on ``level``
        (it divides by the downsample and truncates)."""
        ds = self.level_downsamples[level]
        base = int(round(coordinate * ds))
        while int(base / ds) > coordinate:
            base -= 1
        while int(base / ds) < coordinate:
            base += 1
        return base

    def close(self) -> None:
        self._slide.close()


def _positive_pair(x: object, y: object) -> tuple[float, float] | None:
    try:
        fx, fy = float(x), float(y if y is not None else x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(fx) and np.isfinite(fy)) or fx <= 0 or fy <= 0:
        return None
    return fx, fy


def _white_outside(
    region: np.ndarray, level: int, x: int, y: int, dims: tuple[tuple[int, int], ...]
) -> np.ndarray:
    """tiffslide pads outside the slide with black; make it glass-white (no fake stain)."""
    width, height = dims[level]
    h, w = region.shape[:2]
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return region
    region = np.ascontiguousarray(region)
    region[: max(0, -y)] = 255
    region[max(0, height - y) :] = 255
    region[:, : max(0, -x)] = 255
    region[:, max(0, width - x) :] = 255
    return region


@READERS.register("tiffslide")
def _tiffslide(path: Path) -> SlideReader:
    return TiffSlideReader(path)


def open_slide(path: Path, reader: str = "tiffslide") -> SlideReader:
    """Open ``path`` with the named backend.

    Raises:
        MilCytoError: naming the file: missing, or not a whole-slide image.
    """
    return READERS.create(reader, path=Path(path))


def is_slide_file(path: Path) -> bool:
    """Whether ``path`` is to be read as a whole-slide image: any ``.svs`` / ``.ndpi`` file,
    and a ``.tif`` / ``.tiff`` that holds a resolution pyramid (more than one level). A flat
    TIFF stays a photo. Reads the TIFF header only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ALWAYS_SLIDES:
        return True
    if suffix not in SLIDE_SUFFIXES or not path.is_file():
        return False
    from tifffile import TiffFile, TiffFileError

    try:
        with TiffFile(path) as tif:
            return bool(tif.series) and len(tif.series[0].levels) > 1
    except (TiffFileError, OSError, ValueError, IndexError):
        return False
