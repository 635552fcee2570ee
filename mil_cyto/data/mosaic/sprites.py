"""One crop -> a sprite ready to place: optical density relative to its own background and a
coverage (alpha) from its mask or a feathered ellipse; :func:`pose_sprite` turns, flips and
rescales it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from mil_cyto.data.images import load_rgb
from mil_cyto.data.mosaic.config import MaskSpec
from mil_cyto.data.mosaic.crops import IMAGE_SUFFIXES, CellCrop
from mil_cyto.errors import MilCytoError


@dataclass(frozen=True, eq=False)
class CellSprite:
    """A crop ready to place: optical density ``od`` (h, w, 3) float32 >= 0 relative to the
    crop's own background, and coverage ``alpha`` (h, w) float32 in [0, 1]."""

    od: np.ndarray
    alpha: np.ndarray


def _ellipse_alpha(h: int, w: int, feather: float = 0.12) -> np.ndarray:
    """Feathered ellipse inscribed in an (h, w) crop (1 inside, 0 at the corners)."""
    yy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (0.5 * h)
    xx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (0.5 * w)
    r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            grey = im if im.mode in ("P", "L", "1", "I", "I;16") else im.convert("L")
            mask = np.asarray(grey).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MilCytoError(f"cannot read mask {path} ({err}); fix or remove it") from None
    if mask.shape != shape:
        raise MilCytoError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px but its crop is "
            f"{shape[1]}x{shape[0]}; masks must match their crops"
        )
    return mask


def _find_mask(cells_dir: Path, crop: CellCrop, masks: MaskSpec) -> Path | None:
    folder = Path(masks.folder)
    if not folder.is_absolute():
        folder = cells_dir / folder
    stem = Path(crop.rel_path).stem + masks.suffix
    sub = folder / crop.folder
    for ext in IMAGE_SUFFIXES:
        for cand in (sub / f"{stem}{ext}", sub / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def load_sprite(cells_dir: Path, crop: CellCrop, masks: MaskSpec | None = None) -> CellSprite:
    """Read one crop as optical density relative to its background, with its alpha.

    The background is the per-channel median of the mask's background pixels, else the 75th
    percentile of the crop's one-pixel border (near-white glass around the cell).
    """
    path = Path(cells_dir) / crop.rel_path
    rgb = load_rgb(path).astype(np.float32)
    h, w = rgb.shape[:2]
    fg: np.ndarray | None = None
    if masks is not None:
        mask_path = _find_mask(Path(cells_dir), crop, masks)
        if mask_path is not None:
            fg = ~np.isin(_read_mask(mask_path, (h, w)), masks.background)
            fg = ndimage.binary_fill_holes(fg)
    if fg is not None and (~fg).sum() >= 8 and fg.any():
        bg = np.median(rgb[~fg], axis=0)
        alpha = ndimage.gaussian_filter(fg.astype(np.float32), 0.6)
        alpha = np.where(fg, np.maximum(alpha, 0.5), alpha).astype(np.float32)
    else:
        border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
        bg = np.percentile(border, 75, axis=0)
        alpha = _ellipse_alpha(h, w)
    bg = np.maximum(bg, 1.0)
    od = -np.log(np.clip(np.maximum(rgb, 1.0) / bg, 1e-3, 1.0)).astype(np.float32)
    return CellSprite(od, alpha)


def pose_sprite(
    sprite: CellSprite, rng: np.random.Generator, scale: tuple[float, float]
) -> CellSprite:
    """A right-angle turn, a flip and (if ``scale`` is not (1, 1)) a bilinear rescale."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.random() < 0.5)
    factor = float(rng.uniform(*scale)) if scale[0] != scale[1] else float(scale[0])
    od, alpha = np.rot90(sprite.od, k), np.rot90(sprite.alpha, k)
    if flip:
        od, alpha = od[:, ::-1], alpha[:, ::-1]
    if factor != 1.0:
        od = ndimage.zoom(od, (factor, factor, 1), order=1, grid_mode=True, mode="nearest")
        alpha = ndimage.zoom(alpha, factor, order=1, grid_mode=True, mode="nearest")
    return CellSprite(np.ascontiguousarray(od), np.ascontiguousarray(alpha))
