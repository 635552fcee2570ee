"""Reading photos as RGB arrays, with one clear error for anything unreadable."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mil_cyto.errors import MilCytoError
from mil_cyto.slides.reader import is_slide_file

MAX_IMAGE_PIXELS = 400_000_000
"""Refuse images above this many pixels (PIL's decompression-bomb guard is raised to it)."""

_PIL_GUARD = threading.Lock()
"""PIL's guard is one process-wide value (``Image.MAX_IMAGE_PIXELS``, checked when a file is
opened); photos are read on several threads, so it is raised and restored under this lock,
around the open only (the header read), never around the decoding."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white (glass)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        return Image.fromarray((array / top * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path, *, hint: str = "") -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 array.

    Grayscale, palette, 16-bit and RGBA images are converted, not refused.

    Raises:
        MilCytoError: the file is missing, not an image, truncated, or too large.
    """
    where = f"{hint}: " if hint else ""
    path = Path(path)
    if not path.is_file():
        raise MilCytoError(f"{where}image {path} not found; fix the path or remove its row")
    if is_slide_file(path):
        raise MilCytoError(
            f"{where}{path} is a whole-slide image: only feature extraction reads slides "
            "(lazily, region by region, mil_cyto.slides), never decoded whole; this step needs "
            "photos: export fields from the slide or leave it out of this step"
        )
    try:
        with _open_guarded(path) as image:
            image.load()
            rgb = to_rgb(image)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except Image.DecompressionBombError as err:
        raise MilCytoError(
            f"{where}image {path} is too large ({err}); split it into fields first"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise MilCytoError(
            f"{where}cannot read image {path} ({type(err).__name__}: {err}); "
            "re-export it as PNG/JPEG/TIFF or remove its row"
        ) from None


def _open_guarded(path: Path) -> Image.Image:
    """``Image.open`` with PIL's decompression-bomb guard at :data:`MAX_IMAGE_PIXELS`."""
    with _PIL_GUARD:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
