"""The canvas a field photo is painted on, where its cells go, and how it becomes RGB.

Public placement API (also used by :mod:`mil_cyto.data.mosaic`): :class:`Canvas` (RGB optical
density (3, H, W) float32 plus shared noise fields and the drawn cells' boxes), :func:`positions`
((n, 2) float cell centres in px: uniform scatter plus smear streaks) and :func:`render`
(canvas -> (H, W, 3) uint8 photo with glass tint, illumination, blur and sensor noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from mil_cyto.data.synthetic.geometry import LutAngles, Noise, outline_lut
from mil_cyto.data.synthetic.stain import Stain

Window = tuple[tuple[slice, slice], np.ndarray, np.ndarray]
"""A patch of the canvas: ``((rows, cols), xs, ys)`` with the local x offsets ``xs`` (1, w) and
y offsets ``ys`` (h, 1) in px from the patch's centre, float32."""


class Canvas:
    """RGB optical density (3, H, W) float32, shared noise fields, and the cell list.

    Dyes are converted to RGB optical density through the slide's stain matrix as they are
    added, so that rendering is a single ``exp``. ``width`` and ``height`` are in px; ``fine``,
    ``medium`` and ``coarse`` are unit-variance noise fields (index them with a window's
    ``(rows, cols)``); ``cells`` holds one box dict per recorded cell (``x0, y0, x1, y1`` int px,
    x1/y1 exclusive, ``grade``, ``kind``). Building it draws the noise from ``rng``.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int, stain: Stain) -> None:
        self.width, self.height = width, height
        self.stain = stain.matrix()  # (3 stains, RGB)
        self.od = np.zeros((3, height, width), dtype=np.float32)  # RGB optical density
        self.fine = Noise(rng, 0.7, tile=128)  # chromatin grain
        self.medium = Noise(rng, 2.0, tile=160)  # clumps, outline wobble
        self.coarse = Noise(rng, 6.0, tile=192)  # cytoplasm mottling
        self.cells: list[dict[str, Any]] = []
        self.lut = LutAngles.build()
        self._banks: dict[str, list[np.ndarray | None]] = {}

    def bank(
        self,
        rng: np.random.Generator,
        name: str,
        poly: tuple[float, float] = (0.0, 0.0),
        size: int = 8,
        **outline: Any,
    ) -> list[np.ndarray | None]:
        """A per-photo bank of ``size`` outline LUTs for the common cells (built on first use;
        each cell still gets its own size, axis ratio and orientation)."""
        if name not in self._banks:
            self._banks[name] = [
                outline_lut(rng, self.lut, poly=rng.uniform(*poly), **outline) for _ in range(size)
            ]
        return self._banks[name]

    def window(self, cx: float, cy: float, rx: float, ry: float | None = None) -> Window | None:
        """Patch around (cx, cy) of half-size (rx, ry) px, clipped to the image, with the local
        offset grids ``xs`` (1, w) and ``ys`` (h, 1); None when it misses the image."""
        ry = rx if ry is None else ry
        x0, x1 = max(0, math.floor(cx - rx)), min(self.width, math.ceil(cx + rx) + 1)
        y0, y1 = max(0, math.floor(cy - ry)), min(self.height, math.ceil(cy + ry) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
        ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
        return (slice(y0, y1), slice(x0, x1)), xs, ys

    def add(self, stain: int, win: tuple[slice, slice], amount: np.ndarray) -> None:
        """Add ``amount`` (patch-shaped, dye units) of one stain inside ``win``."""
        view = self.od[:, win[0], win[1]]
        view += self.stain[stain][:, None, None] * amount

    def add_mix(self, mix: Sequence[float], win: tuple[slice, slice], amount: np.ndarray) -> None:
        """Add ``amount`` of a dye blend, ``mix`` = shares of (haematoxylin, eosin, green)."""
        col = np.asarray(mix, dtype=np.float32) @ self.stain
        view = self.od[:, win[0], win[1]]
        view += col[:, None, None] * amount

    def record(self, win: tuple[slice, slice], mask: np.ndarray, grade: str, kind: str) -> None:
        """Store the box (x1, y1 exclusive) of ``mask`` > 0.5 within ``win`` as one cell."""
        inside = mask > 0.5
        rows = np.flatnonzero(inside.any(axis=1))
        cols = np.flatnonzero(inside.any(axis=0))
        if rows.size == 0:  # a sliver at the border: fall back to any coverage, then the patch
            inside = mask > 0
            rows = np.flatnonzero(inside.any(axis=1))
            cols = np.flatnonzero(inside.any(axis=0))
            if rows.size == 0:
                rows = np.arange(mask.shape[0])
                cols = np.arange(mask.shape[1])
        sy, sx = win
        self.cells.append(
            {
                "x0": int(sx.start + cols[0]),
                "y0": int(sy.start + rows[0]),
                "x1": int(sx.start + cols[-1] + 1),
                "y1": int(sy.start + rows[-1] + 1),
                "grade": grade,
                "kind": kind,
            }
        )


def positions(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """(n, 2) float64 cell centres (x, y) in px within [0, width - 1] x [0, height - 1]: a mix
    of uniform scatter and smear streaks (Gaussian clumps), reflected at the borders."""
    pts = rng.uniform((0, 0), (width, height), (n, 2))
    k = int(rng.integers(1, 5))
    centres = rng.uniform((0, 0), (width, height), (k, 2))
    spread = rng.uniform(0.12, 0.3) * max(width, height)
    clustered = rng.random(n) < rng.uniform(0.2, 0.7)
    m = int(clustered.sum())
    pts[clustered] = centres[rng.integers(0, k, m)] + rng.normal(0, spread, (m, 2))
    size = np.array([width - 1.0, height - 1.0])
    pts = np.abs(pts)
    pts = size - np.abs(size - pts)  # reflect at the borders
    return np.clip(pts, 0, size)


def render(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Beer-Lambert rendering with tinted glass, uneven illumination (vignetting and a gentle
    gradient), white balance, focus blur and sensor noise, drawn from ``rng``.

    Returns the (H, W, 3) uint8 RGB photo of ``cv.od``; the canvas itself is left unchanged.
    """
    h, w = cv.height, cv.width
    glass = rng.uniform((0.008, 0.0, 0.0), (0.03, 0.025, 0.025)) @ cv.stain  # tint, RGB OD
    scale = np.float32(max(h, w) / 2)
    yy = (np.arange(h, dtype=np.float32) - np.float32(h / 2)) / scale
    xx = (np.arange(w, dtype=np.float32) - np.float32(w / 2)) / scale
    ox, oy = rng.uniform(-0.3, 0.3, 2).tolist()
    vign = rng.uniform(0.0, 0.18)
    ga = rng.uniform(0, 2 * math.pi)
    grad = rng.uniform(-0.06, 0.06)
    # separable illumination: 1 - vign/2 * r^2 + grad * (direction . position)
    row = 1.0 - 0.5 * vign * np.square(xx - ox) + grad * math.cos(ga) * xx
    col = -0.5 * vign * np.square(yy - oy) + grad * math.sin(ga) * yy
    gain = 255.0 * rng.uniform(0.86, 1.02) * (1.0 + rng.normal(0, 0.025, 3)) * np.exp(-glass)
    sigma = rng.uniform(0.0, 1.2)
    read, shot = rng.uniform(0.8, 3.0), rng.uniform(0.1, 0.35)
    # sensor noise: read + shot (std grows with sqrt of the signal); triangular-distributed
    # from random bytes (raw generator words: fastest), a cheap stand-in for Gaussian noise
    # (the std of the difference of two uniform bytes is 104.5)
    raw = rng.bit_generator.random_raw(-(-6 * h * w // 8)).view(np.uint8)[: 6 * h * w]
    raw = raw.reshape(2, 3, h, w)

    out = np.empty((h, w, 3), dtype=np.uint8)
    p = np.empty((h, w), dtype=np.float32)
    q = np.empty((h, w), dtype=np.float32)
    n = np.empty((h, w), dtype=np.float32)
    for c in range(3):
        g = np.float32(gain[c])
        np.negative(cv.od[c], out=p)
        np.exp(p, out=p)
        np.add((row * g)[None, :], (col * g)[:, None], out=q)
        p *= q
        if sigma > 0.15:
            ndimage.gaussian_filter(p, sigma, output=q, truncate=2.0)
            p, q = q, p
        np.sqrt(p, out=q)
        q *= np.float32(shot / 104.5)
        q += np.float32(read / 104.5)
        np.subtract(raw[0, c], raw[1, c], out=n, dtype=np.float32)
        q *= n
        p += q
        np.clip(p, 0.0, 255.0, out=p)
        out[:, :, c] = p
    return out
