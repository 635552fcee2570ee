"""One mosaic field photo: glass from the synthetic canvas, then every cell sprite placed on it
(normal cells in smear streaks, atypical ones where they overlap the others least)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mil_cyto.data.mosaic.sprites import CellSprite, pose_sprite
from mil_cyto.data.synthetic.canvas import Canvas, positions, render
from mil_cyto.data.synthetic.stain import random_stain


def _place(
    od_acc: np.ndarray, cover: np.ndarray, sprite: CellSprite, cx: float, cy: float
) -> tuple[int, int, int, int] | None:
    """Add ``sprite`` centred at (cx, cy); returns its clipped box (x0, y0, x1, y1) of
    alpha > 0.5, or None when nothing of it lands in the image."""
    H, W = cover.shape
    h, w = sprite.alpha.shape
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    ax0, ay0 = max(0, -x0), max(0, -y0)
    bx0, by0 = max(0, x0), max(0, y0)
    bx1, by1 = min(W, x0 + w), min(H, y0 + h)
    if bx0 >= bx1 or by0 >= by1:
        return None
    a = sprite.alpha[ay0 : ay0 + by1 - by0, ax0 : ax0 + bx1 - bx0]
    od_acc[by0:by1, bx0:bx1] += (
        a[..., None] * sprite.od[ay0 : ay0 + by1 - by0, ax0 : ax0 + bx1 - bx0]
    )
    cover[by0:by1, bx0:bx1] += a
    inside = a > 0.5
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return bx0 + int(cols[0]), by0 + int(rows[0]), bx0 + int(cols[-1]) + 1, by0 + int(rows[-1]) + 1


def draw_mosaic(
    rng: np.random.Generator,
    width: int,
    height: int,
    normal: Sequence[tuple[CellSprite, str]],
    atypical: Sequence[tuple[CellSprite, str, str]],
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    stain_gain: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One field photo in memory.

    Args:
        rng: the field's random stream.
        width, height: photo size in px.
        normal: ``(sprite, kind)`` of the normal cells, placed in smear streaks first.
        atypical: ``(sprite, grade, kind)`` of the atypical cells, each put where the best of
            12 candidate spots overlaps the cells already placed the least, fully inside.
        scale: per-cell rescale range.
        stain_gain: (3,) multiplier of every cell's optical density (the slide's staining).

    Returns:
        ``(image, cells)``: (H, W, 3) uint8 RGB; one dict per cell visible in the photo with
        ``x0, y0, x1, y1`` (x1, y1 exclusive), ``grade``, ``kind`` and ``source`` (its index
        in ``normal`` followed by ``atypical``).
    """
    glass = _glass(rng, width, height)
    od_acc = np.zeros((height, width, 3), dtype=np.float32)
    cover = np.zeros((height, width), dtype=np.float32)
    cells: list[dict[str, Any]] = []
    gain = np.ones(3, np.float32) if stain_gain is None else np.asarray(stain_gain, np.float32)

    def record(box: tuple[int, int, int, int], grade: str, kind: str, source: int) -> None:
        x0, y0, x1, y1 = box
        cells.append(
            {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "grade": grade, "kind": kind, "source": source}
        )

    for j, ((sprite, kind), (x, y)) in enumerate(
        zip(normal, positions(rng, len(normal), width, height), strict=True)
    ):
        box = _place(od_acc, cover, pose_sprite(sprite, rng, scale), float(x), float(y))
        if box is not None:
            record(box, "normal", kind, j)
    for j, (sprite, grade, kind) in enumerate(atypical, start=len(normal)):
        posed = pose_sprite(sprite, rng, scale)
        box = _place(od_acc, cover, posed, *_least_covered_spot(rng, cover, posed.alpha.shape))
        if box is not None:
            record(box, grade, kind, j)
    od_acc *= gain
    image = np.clip(glass * np.exp(-od_acc) + 0.5, 0, 255).astype(np.uint8)
    return image, cells


def _glass(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An empty slide, (height, width, 3) float32 RGB: the synthetic canvas with a random stain,
    faint mucus only, rendered (tint, illumination, blur, sensor noise)."""
    cv = Canvas(rng, width, height, random_stain(rng))
    mucus = np.clip(cv.coarse[(slice(0, height), slice(0, width))], 0.0, None)
    cv.add_mix((0.1, 0.5, 0.4), (slice(0, height), slice(0, width)), np.float32(0.04) * mucus)
    return render(cv, rng).astype(np.float32)


def _least_covered_spot(
    rng: np.random.Generator, cover: np.ndarray, size: tuple[int, ...]
) -> tuple[float, float]:
    """Centre (x, y) px for a sprite of ``size`` (h, w): of 12 random spots that keep it inside
    the field, the one whose box holds the least coverage ``cover`` (H, W) so far."""
    height, width = cover.shape
    h, w = size
    lo_x, hi_x = w / 2, max(w / 2, width - w / 2)
    lo_y, hi_y = h / 2, max(h / 2, height - h / 2)
    cand = rng.uniform((lo_x, lo_y), (hi_x, hi_y), (12, 2))
    table = np.pad(cover, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

    def overlap(c: np.ndarray) -> float:
        x0, y0 = max(0, int(c[0] - w / 2)), max(0, int(c[1] - h / 2))
        x1, y1 = min(width, x0 + w), min(height, y0 + h)
        return float(table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0])

    best = min(range(len(cand)), key=lambda i: overlap(cand[i]))
    return float(cand[best][0]), float(cand[best][1])
