"""Pictures for review: a score map blended over a photo, boxes, and top-k tile crops.

Everything works on ``(H, W, 3)`` uint8 RGB arrays and returns new arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from mil_cyto.errors import MilCytoError
from mil_cyto.reporting import attention_heatmap

COLOUR_MAPS = ("inferno", "viridis", "magma", "turbo", "coolwarm", "gray")
"""Colour maps offered for overlays (any matplotlib name works in :func:`blend`)."""


@dataclass(frozen=True)
class Box:
    """A rectangle to draw: ``x0, y0, x1, y1`` in photo pixels, an RGB colour, a line width."""

    xyxy: tuple[float, float, float, float]
    colour: tuple[int, int, int]
    width: int = 2


def attention_map(size_hw: tuple[int, int], coords: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Tile scores as a ``(H, W)`` rank map in [0, 1], NaN off-tissue (mil_cyto.reporting)."""
    return attention_heatmap(size_hw, coords, scores)


def normalise_map(values: np.ndarray, *, signed: bool = False, clip: float = 99.0) -> np.ndarray:
    """A pixel attribution map ``(H, W)`` scaled to [0, 1] for display.

    ``signed`` maps 0 to 0.5 (for a diverging colour map); otherwise the absolute value is
    shown. The ``clip`` percentile of the magnitudes maps to the end of the scale, so a few
    extreme pixels do not wash the rest out. NaN stays NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    magnitude = np.abs(values[finite])
    top = float(np.percentile(magnitude, clip)) if magnitude.size else 0.0
    top = top or 1.0
    if signed:
        return np.clip(0.5 + 0.5 * values / top, 0.0, 1.0)
    return np.clip(np.abs(values) / top, 0.0, 1.0)


def blend(
    photo: np.ndarray, heat: np.ndarray, *, cmap: str = "inferno", opacity: float = 0.5
) -> np.ndarray:
    """``photo`` ``(H, W, 3)`` uint8 with ``heat`` ``(H, W)`` in [0, 1] painted over it.

    ``opacity`` in [0, 1] is the colour's weight; where ``heat`` is NaN the photo shows as is.
    """
    if photo.shape[:2] != heat.shape:
        raise MilCytoError(
            f"score map {heat.shape} does not match the photo {photo.shape[:2]}; "
            "was the photo replaced after the run?"
        )
    if not 0.0 <= opacity <= 1.0:
        raise MilCytoError(f"opacity {opacity} must lie in [0, 1]")
    valid = np.isfinite(heat)
    colour = colormaps[cmap](np.where(valid, heat, 0.0))[..., :3] * 255.0
    alpha = np.where(valid, opacity, 0.0)[..., None]
    out = photo.astype(np.float64) * (1.0 - alpha) + colour * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """A copy of ``image`` with rectangle outlines (clipped to the image)."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    height, width = image.shape[:2]
    for box in boxes:
        x0, y0, x1, y1 = box.xyxy
        x0, x1 = max(0.0, x0), min(width - 1.0, x1 - 1)
        y0, y1 = max(0.0, y0), min(height - 1.0, y1 - 1)
        if x1 > x0 and y1 > y0:
            draw.rectangle((x0, y0, x1, y1), outline=box.colour, width=box.width)
    return np.asarray(canvas)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first (stable for ties)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return order[: max(0, k)]


def crop(photo: np.ndarray, box: Sequence[float], *, pad: int = 0) -> np.ndarray:
    """The pixels of ``box`` (``x0, y0, x1, y1``) widened by ``pad``, clipped to the photo."""
    height, width = photo.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0 - pad), max(0, y0 - pad)
    x1, y1 = min(width, x1 + pad), min(height, y1 + pad)
    return photo[y0:y1, x0:x1].copy()


def fit_width(image: np.ndarray, max_width: int) -> np.ndarray:
    """Downscale ``image`` to at most ``max_width`` px wide (aspect kept; never upscales)."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    size = (max_width, max(1, round(height * max_width / width)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
