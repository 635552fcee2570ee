"""A synthetic whole slide: synthetic Pap-smear fields stitched into a tiled, compressed
pyramidal TIFF, written tile by tile (memory: the field bank, never a level).

The slide is a grid of ``block`` x ``block`` px blocks; blocks inside an elliptical smear
hold one of ``n_fields`` fields drawn by :func:`~mil_cyto.data.synthetic.draw_field` (reused
in a seeded pattern), blocks outside are glass. Each pyramid level halves the previous one
and is assembled from the fields downsampled once, so a 40,000 px slide writes in bounded
memory. Pixel size is recorded in the TIFF resolution tags (centimetres), where tiffslide
and OpenSlide read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mil_cyto.data.synthetic import draw_field, reference_stain
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_path

GLASS = 238
"""Grey level of empty glass in the synthetic slide."""


def _field_bank(
    n_fields: int, block: int, um_per_px: float, grade: str, seed: int, levels: int
) -> list[np.ndarray]:
    """``levels`` arrays ``(n_fields, block / 2**k, block / 2**k, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    stain = reference_stain()
    fields = np.stack(
        [
            draw_field(rng, block, block, grade, stain, um_per_px=um_per_px)[0]
            for _ in range(n_fields)
        ]
    )
    bank = [fields]
    for _ in range(1, levels):
        prev = bank[-1]
        side = prev.shape[1] // 2
        bank.append(
            np.stack(
                [
                    np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BOX))
                    for f in prev
                ]
            )
        )
    return bank


def _layout(blocks_x: int, blocks_y: int, n_fields: int, seed: int, smear: float) -> np.ndarray:
    """``(blocks_y, blocks_x)`` int: the field index of each block, -1 for glass."""
    rng = np.random.default_rng(seed + 1)
    yy, xx = np.mgrid[0:blocks_y, 0:blocks_x]
    cx, cy = (blocks_x - 1) / 2, (blocks_y - 1) / 2
    inside = ((xx - cx) / (blocks_x / 2)) ** 2 + ((yy - cy) / (blocks_y / 2)) ** 2 <= smear
    layout = rng.integers(0, n_fields, size=(blocks_y, blocks_x))
    return np.where(inside, layout, -1)


def _tiles(
    layout: np.ndarray, fields: np.ndarray, tile: int, width: int, height: int
) -> Iterator[np.ndarray]:
    """The level's ``tile`` x ``tile`` tiles in row-major order (tifffile's order)."""
    block = fields.shape[1]
    for ty in range(0, height, tile):
        for tx in range(0, width, tile):
            out = np.full((tile, tile, 3), GLASS, dtype=np.uint8)
            for by in range(ty // block, min(layout.shape[0], -(-(ty + tile) // block))):
                for bx in range(tx // block, min(layout.shape[1], -(-(tx + tile) // block))):
                    index = layout[by, bx]
                    if index < 0:
                        continue
                    x0, y0 = bx * block, by * block
                    sx0, sy0 = max(x0, tx), max(y0, ty)
                    sx1 = min(x0 + block, tx + tile, width)
                    sy1 = min(y0 + block, ty + tile, height)
                    out[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx] = fields[index][
                        sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0
                    ]
            yield out


def write_synthetic_slide(
    path: Path,
    size: int,
    *,
    um_per_px: float | None = 0.5,
    levels: int = 4,
    block: int = 1024,
    tile: int = 512,
    n_fields: int = 8,
    grade: str = "CIN2+",
    smear: float = 0.5,
    compression: str = "jpeg",
    seed: int = 0,
) -> Path:
    """Write a ``size`` x ``size`` px pyramidal TIFF of synthetic fields to ``path``.

    ``levels``: pyramid levels (downsample 1, 2, 4, ...; SubIFDs of level 0);
    ``um_per_px``: level-0 pixel size written to the resolution tags (None: no resolution, a
    slide whose pixel size is unknown); ``smear``: the squared radius of the smear ellipse
    relative to the slide (0.5 covers about 40% of it). Returns ``path``.
    """
    import tifffile

    if block % (2 ** (levels - 1)) or tile % 16:
        raise MilCytoError(f"block {block} must divide by 2**(levels-1), tile {tile} by 16")
    blocks = -(-size // block)
    layout = _layout(blocks, blocks, n_fields, seed, smear)
    bank = _field_bank(n_fields, block, um_per_px or 0.5, grade, seed, levels)
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "compression": compression,
        "photometric": "rgb",
    }
    with atomic_path(Path(path)) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level in range(levels):
            side = -(-size // 2**level)
            extra: dict[str, Any] = {"subifds": levels - 1} if level == 0 else {"subfiletype": 1}
            if um_per_px is not None:
                per_cm = 1e4 / (um_per_px * 2**level)
                extra.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            tif.write(
                _tiles(layout, bank[level], tile, side, side),
                shape=(side, side, 3),
                dtype=np.uint8,
                **options,
                **extra,
            )
    return Path(path)
