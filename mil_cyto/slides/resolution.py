"""Reading a slide at an exact pixel size: the level to read, and the resampling to it.

The *working* resolution is the requested micrometres per pixel. A region is read from the
coarsest pyramid level that is not coarser than that (so detail is never invented), then
resampled to exactly the working pixel grid. Working pixel ``(x, y)`` covers level-0 pixels
``x * um_per_px / mpp_x`` onwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mil_cyto.errors import MilCytoError
from mil_cyto.slides.reader import SlideReader


@dataclass(frozen=True)
class LevelChoice:
    """Where working pixels come from: ``level``, and ``fx`` / ``fy`` level pixels per
    working pixel (>= 1 - tolerance: the level is at least as fine). ``size``: the whole
    slide in working pixels, ``(width, height)``; ``level0_per_px``: level-0 pixels per
    working pixel, ``(x, y)`` (working box * this = level-0 box)."""

    level: int
    fx: float
    fy: float
    um_per_px: float
    size: tuple[int, int]
    level0_per_px: tuple[float, float]

    @property
    def exact(self) -> bool:
        """True when working pixels are level pixels (no resampling)."""
        return abs(self.fx - 1.0) < 1e-6 and abs(self.fy - 1.0) < 1e-6


def choose_level(reader: SlideReader, um_per_px: float, tolerance: float = 0.02) -> LevelChoice:
    """The coarsest level whose pixels are at most ``um_per_px * (1 + tolerance)``.

    Raises:
        MilCytoError: naming the slide: it does not record its pixel size, or its finest
            level is coarser than ``um_per_px``.
    """
    if reader.mpp is None:
        raise MilCytoError(
            f"slide {reader.path} does not record its pixel size (no microns-per-pixel in its "
            "metadata or TIFF resolution tags); re-export it with its resolution (e.g. TIFF "
            "XResolution/YResolution in centimetres, or the Aperio MPP field)"
        )
    mx, my = reader.mpp
    limit = um_per_px * (1.0 + tolerance)
    best: int | None = None
    for level, ds in enumerate(reader.level_downsamples):
        if (
            mx * ds <= limit
            and my * ds <= limit
            and (best is None or ds > reader.level_downsamples[best])
        ):
            best = level
    if best is None:
        raise MilCytoError(
            f"slide {reader.path}: its finest level is {mx:.3g} x {my:.3g} um/px, coarser than "
            f"the requested {um_per_px:.3g} um/px; ask for --um-per-px {max(mx, my):.3g} or "
            "more, or scan the slide at a higher magnification"
        )
    ds = reader.level_downsamples[best]
    w0, h0 = reader.level_dimensions[0]
    return LevelChoice(
        level=best,
        fx=um_per_px / (mx * ds),
        fy=um_per_px / (my * ds),
        um_per_px=um_per_px,
        size=(int(w0 * mx / um_per_px), int(h0 * my / um_per_px)),
        level0_per_px=(um_per_px / mx, um_per_px / my),
    )


def read_working(
    reader: SlideReader, choice: LevelChoice, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """Working-resolution region at ``(x, y)``, ``width`` x ``height`` working px:
    ``(height, width, 3)`` uint8. Reads only the level's pixels under it plus the filter's
    support, resampled with PIL's antialiased bilinear filter, so a region equals the same
    pixels of the whole slide resampled at once (up to rounding; white beyond the edge)."""
    if choice.exact:
        return reader.read(choice.level, x, y, width, height)
    lx0, ly0 = x * choice.fx, y * choice.fy
    lx1, ly1 = (x + width) * choice.fx, (y + height) * choice.fy
    mx, my = math.ceil(choice.fx) + 1, math.ceil(choice.fy) + 1  # the filter's support
    ix0, iy0 = math.floor(lx0) - mx, math.floor(ly0) - my
    ix1, iy1 = math.ceil(lx1) + mx, math.ceil(ly1) + my
    region = reader.read(choice.level, ix0, iy0, ix1 - ix0, iy1 - iy0)
    image = Image.fromarray(region).resize(
        (width, height),
        Image.Resampling.BILINEAR,
        box=(lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0),
    )
    return np.asarray(image)


def read_downsampled(
    reader: SlideReader, choice: LevelChoice, *, budget_px: int = 16_000_000
) -> np.ndarray:
    """The whole slide at ``choice``'s (coarse) resolution, ``(H, W, 3)`` uint8, read in
    strips of rows whose level pixels number at most ``budget_px`` (about 48 MB), so a slide
    without a small level is never held whole at a fine level."""
    width, height = choice.size
    strip = max(1, int(budget_px / max(1.0, width * choice.fx * choice.fy)))
    out = np.empty((height, width, 3), dtype=np.uint8)
    for y in range(0, height, strip):
        rows = min(strip, height - y)
        out[y : y + rows] = read_working(reader, choice, 0, y, width, rows)
    return out
