"""Drawing primitives in pixels: smooth noise, the bell profile, anti-aliased coverage and
star-shaped cell outlines (:class:`Shape`, made by :func:`make_shape`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


class Noise:
    """Smooth unit-variance noise over the whole plane, periodic with period ``tile`` px.

    A seamless ``tile`` x ``tile`` patch of Gaussian-filtered white noise (periodic filter),
    randomly shifted; indexing with a window ``(slice_y, slice_x)`` returns that patch of the
    frame (float32). Much cheaper than full-frame noise; the period is larger than any cell.
    """

    def __init__(self, rng: np.random.Generator, sigma: float, tile: int = 256) -> None:
        n = ndimage.gaussian_filter(
            rng.standard_normal((tile, tile), dtype=np.float32), sigma, mode="wrap", truncate=3.0
        )
        n -= n.mean()
        n /= max(float(n.std()), 1e-6)
        self.tile = tile
        self.twice = np.tile(n, (2, 2))  # any window up to tile x tile is a plain slice
        self.oy, self.ox = (int(v) for v in rng.integers(0, tile, 2))

    def __getitem__(self, win: tuple[slice, slice]) -> np.ndarray:
        sy, sx = win
        t = self.tile
        h, w = sy.stop - sy.start, sx.stop - sx.start
        y0, x0 = (sy.start + self.oy) % t, (sx.start + self.ox) % t
        if h <= t and w <= t:
            return self.twice[y0 : y0 + h, x0 : x0 + w]
        return self.twice[np.ix_(np.arange(y0, y0 + h) % t, np.arange(x0, x0 + w) % t)]


_LUT_BINS = 2048


def _diamond_index(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Direction of (u, v) as a LUT bin in [0, _LUT_BINS): the "diamond angle", a cheap
    monotonic stand-in for atan2 (np.arctan2 is slow here). Use with ``np.take(mode="clip")``.
    """
    t = v / (np.abs(u) + np.abs(v) + np.float32(1e-12))  # in [-1, 1]
    # diamond angle + 1 in [0, 4): t + 1 where u >= 0, 3 - t where u < 0
    t -= np.float32(1.0)
    s = np.copysign(t, u)
    s -= np.float32(2.0)
    s *= np.float32(-_LUT_BINS / 4)
    return s.astype(np.intp)


def bump(x: np.ndarray) -> np.ndarray:
    """Cheap bell profile 1 / (1 + x^2)^2 (1 at x = 0, ~0.04 at |x| = 2); replaces
    exp(-x^2), which is slow on this hardware."""
    y = np.square(x)
    y += np.float32(1.0)
    np.square(y, out=y)
    return np.reciprocal(y, out=y)


@dataclass(frozen=True, eq=False)
class LutAngles:
    """cos(k phi), sin(k phi) for k = 0..9 at each diamond-angle LUT bin centre, (10, _LUT_BINS)
    each; row 1 is the direction of the bin."""

    cos: np.ndarray
    sin: np.ndarray

    @classmethod
    def build(cls) -> LutAngles:
        dia = -1.0 + 4.0 * (np.arange(_LUT_BINS) + 0.5) / _LUT_BINS
        t = np.where(dia < 1.0, dia, 2.0 - dia)
        x = np.where(dia < 1.0, 1.0, -1.0) * (1.0 - np.abs(t))
        kphi = np.arange(10)[:, None] * np.arctan2(t, x)[None, :]
        return cls(np.cos(kphi).astype(np.float32), np.sin(kphi).astype(np.float32))


@dataclass(frozen=True, eq=False)
class Shape:
    """A star-shaped outline: an ellipse of semi-axes ``a``, ``b`` (px, rotated by ``t``) whose
    normalised radius follows ``radius_lut`` (harmonic wobble blended with a convex polygon).

    ``sdf`` returns an approximate signed distance in px (< 0 inside).
    """

    a: float
    b: float
    cos_t: float
    sin_t: float
    radius_lut: np.ndarray | None  # (_LUT_BINS,) float32 normalised radius; None: ellipse

    @property
    def reach(self) -> float:
        if self.radius_lut is None:
            return 1.0
        return float(self.radius_lut.max()) + 0.01

    def half_size(self, margin: float = 1.0) -> tuple[float, float]:
        """Half width and half height (px) of an axis-aligned box that holds the shape."""
        c, s, r = self.cos_t, self.sin_t, self.reach
        return (
            r * math.hypot(self.a * c, self.b * s) + margin,
            r * math.hypot(self.a * s, self.b * c) + margin,
        )

    def sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Signed distance in px on the grid ``xs`` (1, w) x ``ys`` (h, 1) of local offsets."""
        u = xs * np.float32(self.cos_t / self.a) + ys * np.float32(self.sin_t / self.a)
        v = ys * np.float32(self.cos_t / self.b) - xs * np.float32(self.sin_t / self.b)
        rho = np.sqrt(u * u + v * v)
        if self.radius_lut is None:
            rho -= np.float32(1.0)
        else:
            rho -= np.take(self.radius_lut, _diamond_index(u, v), mode="clip")
        rho *= np.float32(0.5 * (self.a + self.b))
        return rho


def outline_lut(
    rng: np.random.Generator,
    lut: LutAngles,
    *,
    irregularity: float = 0.0,
    orders: tuple[int, ...] = (2, 3, 4),
    poly: float = 0.0,
    n_vertices: tuple[int, int] = (5, 8),
) -> np.ndarray | None:
    """Normalised radius per LUT direction, (_LUT_BINS,) float32, or None for a plain ellipse.

    ``irregularity`` is the max relative amplitude of each harmonic in ``orders``; ``poly`` the
    weight of a random convex polygon with ``n_vertices`` corners (0 = smooth, 1 = angular).
    """
    if irregularity <= 0 and poly <= 0:
        return None
    r = np.ones(_LUT_BINS, dtype=np.float32)
    if irregularity > 0:
        amps = rng.uniform(0.0, irregularity, len(orders))
        phases = rng.uniform(0.0, 2 * math.pi, len(orders))
        for k, amp, ph in zip(orders, amps.tolist(), phases.tolist(), strict=True):
            # amp * cos(k phi + ph)
            r += (amp * math.cos(ph)) * lut.cos[k] - (amp * math.sin(ph)) * lut.sin[k]
    if poly > 0.0:
        k = int(rng.integers(n_vertices[0], n_vertices[1] + 1))
        ang = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * (2 * math.pi / k) + rng.uniform(0, 6.3)
        rad = rng.uniform(0.93, 1.08, k) / math.cos(math.pi / k) ** 0.5
        vx, vy = rad * np.cos(ang), rad * np.sin(ang)
        ex = np.concatenate((vx[1:], vx[:1])) - vx
        ey = np.concatenate((vy[1:], vy[:1])) - vy
        nrm = np.hypot(ex, ey)
        nx, ny = ey / nrm, -ex / nrm
        c = nx * vx + ny * vy  # half-plane offsets (> 0: origin inside)
        # distance from the origin to the boundary along each direction: min over the edges
        # facing it of c / (n . dir) = 1 / max(n . dir / c)
        ray = 1.0 / ((nx / c)[:, None] * lut.cos[1] + (ny / c)[:, None] * lut.sin[1]).max(axis=0)
        r = poly * ray + (1.0 - poly) * r
    return np.maximum(r, 0.05).astype(np.float32)


def make_shape(
    rng: np.random.Generator,
    lut: LutAngles,
    radius: float,
    *,
    aspect: tuple[float, float] = (0.8, 1.0),
    bank: Sequence[np.ndarray | None] | None = None,
    **outline: Any,
) -> Shape:
    """Random outline of mean radius ``radius`` px, axis ratio drawn from ``aspect`` and random
    orientation; its radius LUT is drawn from ``bank`` when given, else made from ``outline``
    (keywords of :func:`outline_lut`)."""
    asp = rng.uniform(*aspect)
    a, b = radius / math.sqrt(asp), radius * math.sqrt(asp)
    t = rng.uniform(0.0, math.pi)
    r = bank[int(rng.integers(0, len(bank)))] if bank else outline_lut(rng, lut, **outline)
    return Shape(a, b, math.cos(t), math.sin(t), r)


def coverage(d: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased inside mask in [0, 1] from a signed distance in px."""
    return np.clip(0.5 - d * (1.0 / edge), 0.0, 1.0)
