"""An uploaded photo: checked, converted to RGB, tiled and run through the trained model.

Every problem becomes a :class:`~mil_cyto.errors.MilCytoError` with one message a reviewer
can act on; nothing here lets a stack trace through to the page.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mil_cyto.data.bags import Bag
from mil_cyto.data.images import MAX_IMAGE_PIXELS, to_rgb
from mil_cyto.data.instances import cut_instances
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.errors import MilCytoError
from mil_cyto.models import MILModel
from mil_cyto.training import predict

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Largest upload accepted, in bytes (a 1600x1200 field photo is a few MB)."""
MAX_UPLOAD_PIXELS = 40_000_000
"""Largest photo accepted, in pixels (about 7300 x 5500); bigger ones should be split."""


@dataclass
class CheckedPhoto:
    """An accepted upload: ``rgb`` ``(H, W, 3)`` uint8 and notes on what was converted."""

    name: str
    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _check_bytes(name: str, data: bytes, max_bytes: int) -> None:
    """Refuse an empty upload or one above ``max_bytes`` bytes."""
    if not data:
        raise MilCytoError(f"{name} is empty; upload a PNG, JPEG or TIFF photo")
    if len(data) > max_bytes:
        raise MilCytoError(
            f"{name} is {_mb(len(data))}, above the {_mb(max_bytes)} limit; "
            "crop it into fields or save it as JPEG"
        )


def _open_image(name: str, data: bytes) -> Image.Image:
    """The upload opened lazily by PIL (header read, pixels not yet decoded); a declared
    decompression bomb, an unknown format or an unreadable header is refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise MilCytoError(
            f"{name} refused as a possible decompression bomb ({err}); "
            "upload a field photo, not a whole-slide image"
        ) from None
    except UnidentifiedImageError:
        raise MilCytoError(
            f"{name} is not an image PIL can read; upload a PNG, JPEG or TIFF photo"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MilCytoError(f"{name} cannot be opened as an image ({err})") from None


def _check_size(name: str, image: Image.Image, tile_size: int, max_pixels: int) -> None:
    """Refuse a photo declaring more than ``MAX_IMAGE_PIXELS`` (a bomb) or ``max_pixels``
    pixels, or smaller than one ``tile_size``-px tile."""
    width, height = image.size
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise MilCytoError(
            f"{name} declares {width}x{height} px ({pixels:,} pixels): refused as a "
            "possible decompression bomb; upload a field photo"
        )
    if pixels > max_pixels:
        raise MilCytoError(
            f"{name} is {width}x{height} px ({pixels / 1e6:.0f} MP), above the "
            f"{max_pixels / 1e6:.0f} MP limit; crop it into fields first"
        )
    if width < tile_size or height < tile_size:
        raise MilCytoError(
            f"{name} is {width}x{height} px, smaller than one {tile_size}-px tile of this "
            "model; upload a larger field photo"
        )


def _decode_rgb(name: str, image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """The photo decoded as ``(H, W, 3)`` uint8 RGB, and a note when it was converted; a
    damaged or truncated file is refused."""
    try:
        image.load()
        notes = []
        if image.mode != "RGB":
            notes.append(f"converted from {image.mode} to RGB")
        rgb = np.asarray(to_rgb(image), dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as err:
        raise MilCytoError(
            f"{name} is damaged or truncated ({err}); re-export it as PNG or JPEG"
        ) from None
    return rgb, notes


def check_upload(
    name: str,
    data: bytes,
    *,
    tile_size: int,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> CheckedPhoto:
    """Open an uploaded file as an RGB photo the model can read.

    Grayscale, palette, 16-bit and RGBA photos are converted (said in ``notes``).

    Raises:
        MilCytoError: the file is empty, too large (bytes or pixels), not an image, a
            decompression bomb (declares far more pixels than any photo), truncated, or
            smaller than one tile of ``tile_size`` px.
    """
    _check_bytes(name, data, max_bytes)
    with _open_image(name, data) as image:
        _check_size(name, image, tile_size, max_pixels)
        rgb, notes = _decode_rgb(name, image)
    return CheckedPhoto(name, rgb, notes)


@dataclass(frozen=True)
class PhotoPrediction:
    """The model's reading of one photo: ``probs`` ``(C,)``, tile ``coords`` ``(N, 4)``,
    ``attention`` ``(N,)`` summing to 1, attention logits ``scores`` ``(N,)``."""

    probs: np.ndarray
    coords: np.ndarray
    attention: np.ndarray
    scores: np.ndarray


def predict_photo(
    model: MILModel, recipe: dict[str, Any], rgb: np.ndarray, *, name: str = "upload"
) -> PhotoPrediction:
    """Cut ``rgb`` into instances as the model was trained (``recipe["tiling"]``: grid tiles
    or nucleus crops) and predict it.

    Raises:
        MilCytoError: the photo holds no tissue tile or no nucleus (an empty bag).
    """
    tiling = TilingConfig(**recipe["tiling"])
    tiles, coords = cut_instances(rgb, tiling, name=name)
    bag = Bag(name, "", 0, tiles, coords, rgb.shape[:2])
    pred = predict(model, [bag], torch.device("cpu"))
    return PhotoPrediction(pred.probs[0], coords, pred.attention[0], pred.scores[0])
