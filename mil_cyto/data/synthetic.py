"""Synthetic Pap-smear field photos with known cell boxes and grades.

The generator paints 10x-objective-like field photos (about 0.7 um per pixel) with an
optical-density (Beer-Lambert) model: every cell adds haematoxylin, eosin and light-green
optical density on its own local patch, and the photo is rendered once as
``RGB = 255 * illumination * exp(-OD @ stain_vectors)``. Overlapping cells therefore darken
naturally. Each patient is one slide (one stain) with one histology grade; a photo's label is
the highest grade of the cells it holds. Every drawn cell is written to ``cells.csv`` with its
box, grade and kind, for localization checks only (never for training).

Public entry points: :class:`SynthConfig`, :func:`generate_dataset` (the whole data set on disk),
:func:`draw_field` (one photo in memory), :class:`Stain`, :func:`random_stain`,
:func:`reference_stain`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_dir, write_csv
from mil_cyto.labels import GRADES

GENERATOR_VERSION = 2
"""Bumped whenever the drawing changes, so that a cached data set is not silently reused."""

CELL_KINDS: tuple[str, ...] = (
    "superficial",
    "intermediate",
    "parabasal",
    "koilocyte",
    "hsil",
    "inflammatory",
    "debris",
)
"""Values of the ``kind`` column of ``cells.csv``."""

ATYPICAL_KIND: Mapping[str, str] = MappingProxyType({"CIN1": "koilocyte", "CIN2+": "hsil"})
"""The atypical cell kind that carries each abnormal grade (read-only)."""

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "patient_id", "histology", "cytology", "hpv")
CELL_COLUMNS: tuple[str, ...] = ("image", "x0", "y0", "x1", "y1", "grade", "kind")

CONFIG_FILE = "synth_config.json"
MANIFEST_FILE = "manifest.csv"
CELLS_FILE = "cells.csv"
IMAGES_DIR = "images"

_HAEM = 0  # row of the haematoxylin stain (then eosin, light green)
_REF_FIELD_UM2 = 800 * 600 * 0.7 * 0.7  # physical area of the reference 800x600 px field
_HPV_POSITIVE_RATE = (0.1, 0.6, 0.9)  # P(hpv positive) for normal, CIN1, CIN2+
_CYTOLOGY_AGREEMENT = 0.8


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic data set; same config => byte-identical files.

    Attributes:
        n_images: number of field photos.
        seed: master seed; patients and every photo draw from streams derived from it.
        width, height: photo size in pixels.
        images_per_patient: inclusive range of photos per patient (one slide each).
        class_fractions: share of patients per grade (normal, CIN1, CIN2+); normalised.
        cells_per_field: inclusive range of cells (squamous, parabasal, inflammatory and
            atypical; debris not counted) in a field of the reference physical size, 800x600 px
            at 0.7 um/px; scaled by the physical area for other sizes.
        atypical_per_field: inclusive range of atypical cells of the photo's grade in an
            abnormal photo (a CIN2+ photo may also hold 0-2 koilocytes).
        um_per_px: micrometres per pixel of the photo.
    """

    n_images: int = 360
    seed: int = 0
    width: int = 800
    height: int = 600
    images_per_patient: tuple[int, int] = (2, 4)
    class_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3)
    cells_per_field: tuple[int, int] = (40, 150)
    atypical_per_field: tuple[int, int] = (1, 5)
    um_per_px: float = 0.7

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so that configs compare and hash consistently.
        for name in (
            "images_per_patient",
            "class_fractions",
            "cells_per_field",
            "atypical_per_field",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        try:
            self._validate()
        except (TypeError, ValueError) as exc:
            raise MilCytoError(f"invalid synthetic data config: {exc}") from None

    def _validate(self) -> None:
        def bad(msg: str) -> MilCytoError:
            return MilCytoError(f"invalid synthetic data config: {msg}")

        if int(self.n_images) != self.n_images or self.n_images < 1:
            raise bad(f"n_images must be a positive integer, got {self.n_images!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise bad(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.width < 64 or self.height < 64:
            raise bad(f"width and height must be at least 64 px, got {self.width}x{self.height}")
        for name in ("images_per_patient", "cells_per_field", "atypical_per_field"):
            rng = getattr(self, name)
            if len(rng) != 2 or not all(int(v) == v for v in rng) or not 1 <= rng[0] <= rng[1]:
                raise bad(f"{name} must be two integers 1 <= low <= high, got {rng!r}")
        fr = self.class_fractions
        if len(fr) != len(GRADES) or any(f < 0 for f in fr) or sum(fr) <= 0:
            raise bad(
                f"class_fractions must be {len(GRADES)} non-negative numbers with a "
                f"positive sum, got {fr!r}"
            )
        if not 0.1 <= self.um_per_px <= 5.0:
            raise bad(f"um_per_px must lie in [0.1, 5], got {self.um_per_px!r}")

    def to_json_dict(self) -> dict[str, Any]:
        """The config as written to ``synth_config.json`` (plus the generator version)."""
        d: dict[str, Any] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
        }
        d["generator_version"] = GENERATOR_VERSION
        return d

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_json_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Stain:
    """One slide's stain: unit optical-density vectors and per-stain intensity.

    ``vectors`` rows are haematoxylin (nuclei), eosin (pink superficial cytoplasm) and light
    green (cyanophilic cytoplasm); columns are the R, G, B optical density per unit dye.
    """

    vectors: tuple[tuple[float, float, float], ...]
    intensity: tuple[float, float, float]

    def matrix(self) -> np.ndarray:
        """Stain matrix (3 stains, 3 RGB channels) float32: OD per unit dye concentration."""
        v = np.asarray(self.vectors, dtype=np.float64)
        return (v * np.asarray(self.intensity)[:, None]).astype(np.float32)


_REFERENCE_VECTORS = (
    (0.62, 0.72, 0.31),  # haematoxylin: blue-purple
    (0.06, 0.83, 0.48),  # eosin: pink
    (0.80, 0.42, 0.33),  # light green: blue-green
)


def reference_stain() -> Stain:
    """The unperturbed stain (unit vectors, intensity 1)."""
    v = np.asarray(_REFERENCE_VECTORS)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return Stain(tuple(tuple(float(x) for x in row) for row in v.round(6)), (1.0, 1.0, 1.0))


def random_stain(rng: np.random.Generator) -> Stain:
    """A patient's stain: the reference vectors perturbed in hue and scaled in intensity."""
    v = np.asarray(_REFERENCE_VECTORS) + rng.normal(0.0, 0.05, (3, 3))
    v = np.clip(v, 0.02, None)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    intensity = np.exp(rng.normal(0.0, 0.15, 3))
    return Stain(
        tuple(tuple(float(x) for x in row) for row in v.round(6)),
        tuple(float(x) for x in intensity.round(6)),
    )


# --------------------------------------------------------------------------------------------
# drawing primitives
# --------------------------------------------------------------------------------------------


class _Noise:
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


def _bump(x: np.ndarray) -> np.ndarray:
    """Cheap bell profile 1 / (1 + x^2)^2 (1 at x = 0, ~0.04 at |x| = 2); replaces
    exp(-x^2), which is slow on this hardware."""
    y = np.square(x)
    y += np.float32(1.0)
    np.square(y, out=y)
    return np.reciprocal(y, out=y)


@dataclass(frozen=True, eq=False)
class _LutAngles:
    """cos(k phi), sin(k phi) for k = 0..9 at each diamond-angle LUT bin centre, (10, _LUT_BINS)
    each; row 1 is the direction of the bin."""

    cos: np.ndarray
    sin: np.ndarray

    @classmethod
    def build(cls) -> _LutAngles:
        dia = -1.0 + 4.0 * (np.arange(_LUT_BINS) + 0.5) / _LUT_BINS
        t = np.where(dia < 1.0, dia, 2.0 - dia)
        x = np.where(dia < 1.0, 1.0, -1.0) * (1.0 - np.abs(t))
        kphi = np.arange(10)[:, None] * np.arctan2(t, x)[None, :]
        return cls(np.cos(kphi).astype(np.float32), np.sin(kphi).astype(np.float32))


@dataclass(frozen=True, eq=False)
class _Shape:
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


def _outline_lut(
    rng: np.random.Generator,
    lut: _LutAngles,
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


def _make_shape(
    rng: np.random.Generator,
    lut: _LutAngles,
    radius: float,
    *,
    aspect: tuple[float, float] = (0.8, 1.0),
    bank: Sequence[np.ndarray | None] | None = None,
    **outline: Any,
) -> _Shape:
    """Random outline of mean radius ``radius`` px, axis ratio drawn from ``aspect`` and random
    orientation; its radius LUT is drawn from ``bank`` when given, else made from ``outline``
    (keywords of :func:`_outline_lut`)."""
    asp = rng.uniform(*aspect)
    a, b = radius / math.sqrt(asp), radius * math.sqrt(asp)
    t = rng.uniform(0.0, math.pi)
    r = bank[int(rng.integers(0, len(bank)))] if bank else _outline_lut(rng, lut, **outline)
    return _Shape(a, b, math.cos(t), math.sin(t), r)


Window = tuple[tuple[slice, slice], np.ndarray, np.ndarray]


class _Canvas:
    """RGB optical density (3, H, W) float32, shared noise fields, and the cell list.

    Dyes are converted to RGB optical density through the slide's stain matrix as they are
    added, so that rendering is a single ``exp``.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int, stain: Stain) -> None:
        self.width, self.height = width, height
        self.stain = stain.matrix()  # (3 stains, RGB)
        self.od = np.zeros((3, height, width), dtype=np.float32)  # RGB optical density
        self.fine = _Noise(rng, 0.7, tile=128)  # chromatin grain
        self.medium = _Noise(rng, 2.0, tile=160)  # clumps, outline wobble
        self.coarse = _Noise(rng, 6.0, tile=192)  # cytoplasm mottling
        self.cells: list[dict[str, Any]] = []
        self.lut = _LutAngles.build()
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
                _outline_lut(rng, self.lut, poly=rng.uniform(*poly), **outline) for _ in range(size)
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


def _coverage(d: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased inside mask in [0, 1] from a signed distance in px."""
    return np.clip(0.5 - d * (1.0 / edge), 0.0, 1.0)


def _draw_nucleus(
    cv: _Canvas,
    cx: float,
    cy: float,
    shape: _Shape,
    od: float,
    *,
    vesicular: float = 0.0,
    chromatin: float = 0.1,
    granular: float = 0.0,
    edge: float = 0.8,
) -> None:
    """Add a haematoxylin nucleus of peak OD ``od``.

    ``vesicular`` lightens the interior against a darker membrane, ``chromatin`` sets the fine
    grain, ``granular`` adds coarse chromatin clumps (hyperchromatic HSIL nuclei).
    """
    w = cv.window(cx, cy, *shape.half_size())
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys)
    m = _coverage(d, edge)
    dens = 1.0 + chromatin * cv.fine[win]
    if vesicular > 0:
        membrane = _bump((d + 1.0) * (1.0 / 1.3))
        dens = dens - vesicular * (1.0 - membrane)
    if granular > 0:
        dens = dens + granular * (np.maximum(cv.medium[win] - 0.2, 0.0) - 0.35)
    cv.add(_HAEM, win, np.float32(od) * m * np.maximum(dens, 0.05))


def _folds(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, radius: float, n: int
) -> np.ndarray | float:
    """Thin dark fold lines starting inside the cell and running to its edge (density units)."""
    out: np.ndarray | float = 0.0
    for _ in range(n):
        r0 = radius * math.sqrt(rng.uniform(0.0, 0.4))
        a0 = rng.uniform(0, 2 * math.pi)
        px, py = r0 * math.cos(a0), r0 * math.sin(a0)
        al = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(al), math.sin(al)
        width = rng.uniform(1.2, 2.8)
        dist = (xs - px) * sa - (ys - py) * ca
        along = (xs - px) * ca + (ys - py) * sa
        line = _bump(dist * (1.0 / width))
        line *= np.clip(0.5 + 0.2 * along, 0.0, 1.0)
        out = out + rng.uniform(0.5, 1.3) * line
    return out


def _cytoplasm_mix(rng: np.random.Generator, cyanophilic: float) -> tuple[float, float, float]:
    """Dye shares (haematoxylin, eosin, light green) of a cytoplasm; ``cyanophilic`` in [0, 1]."""
    g = float(np.clip(cyanophilic + rng.normal(0, 0.08), 0.0, 1.0))
    return 0.04, 1.0 - g, g


def _draw_squamous(
    cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, kind: str, um: float
) -> None:
    """Superficial, intermediate or parabasal cell (``um`` = micrometres per pixel)."""
    if kind == "superficial":
        diam, cyto_od = rng.uniform(45, 65), rng.uniform(0.10, 0.22)
        mix = _cytoplasm_mix(rng, 0.1 if rng.random() < 0.8 else 0.6)
        bank = cv.bank(rng, kind, poly=(0.55, 1.0), irregularity=0.05, orders=(2, 3, 5))
        shape = _make_shape(rng, cv.lut, diam / um / 2, aspect=(0.6, 1.0), bank=bank)
        n_folds = min(int(rng.poisson(0.7)), 2)
    elif kind == "intermediate":
        diam, cyto_od = rng.uniform(42, 62), rng.uniform(0.12, 0.26)
        mix = _cytoplasm_mix(rng, 0.9 if rng.random() < 0.85 else 0.4)
        bank = cv.bank(rng, kind, poly=(0.2, 0.8), irregularity=0.06, orders=(2, 3, 4))
        shape = _make_shape(rng, cv.lut, diam / um / 2, aspect=(0.6, 1.0), bank=bank)
        n_folds = min(int(rng.poisson(0.7)), 2)
    else:  # parabasal: small round dense cyanophilic cell, moderate N/C
        diam, cyto_od = rng.uniform(20, 25), rng.uniform(0.26, 0.40)
        mix = _cytoplasm_mix(rng, 0.85)
        bank = cv.bank(rng, kind, irregularity=0.04, orders=(2, 3))
        shape = _make_shape(rng, cv.lut, diam / um / 2, aspect=(0.8, 1.0), bank=bank)
        n_folds = 0
    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.9)) * cv.medium[win]
    m = _coverage(d)
    rim_w = rng.uniform(1.5, 3.5)
    rim = _bump((d + rim_w) * (1.0 / rim_w))
    dens = 1.0 + rng.uniform(0.08, 0.2) * cv.coarse[win] + rng.uniform(0.3, 0.9) * rim
    if n_folds:
        dens = dens + _folds(rng, xs, ys, min(shape.a, shape.b), n_folds)
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)

    off_r = rng.uniform(0, 0.25) * min(shape.a, shape.b)
    off_a = rng.uniform(0, 2 * math.pi)
    nx, ny = cx + off_r * math.cos(off_a), cy + off_r * math.sin(off_a)
    if kind == "superficial":  # tiny dark pyknotic nucleus ~5 um
        nshape = _make_shape(rng, cv.lut, rng.uniform(4.2, 6.0) / um / 2, aspect=(0.85, 1.0))
        _draw_nucleus(cv, nx, ny, nshape, rng.uniform(1.1, 1.6), chromatin=0.05)
    elif kind == "intermediate":  # small vesicular nucleus ~7-8 um, faint chromatin
        nshape = _make_shape(rng, cv.lut, rng.uniform(6.8, 8.6) / um / 2, aspect=(0.75, 1.0))
        _draw_nucleus(cv, nx, ny, nshape, rng.uniform(0.5, 0.75), vesicular=0.3, chromatin=0.2)
    else:  # parabasal nucleus ~8-9 um, smooth
        nshape = _make_shape(rng, cv.lut, rng.uniform(8.0, 9.2) / um / 2, aspect=(0.8, 1.0))
        _draw_nucleus(cv, nx, ny, nshape, rng.uniform(0.65, 0.9), vesicular=0.25, chromatin=0.2)
    cv.record(win, m, "normal", kind)


def _draw_koilocyte(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, um: float) -> None:
    """CIN1 koilocyte: large cell, enlarged wrinkled hyperchromatic nucleus (2-3x the area of an
    intermediate nucleus), sometimes two, inside a sharp clear halo with a dense rim."""
    diam = rng.uniform(50, 68)
    shape = _make_shape(
        rng,
        cv.lut,
        diam / um / 2,
        aspect=(0.65, 1.0),
        irregularity=0.06,
        orders=(2, 3, 4),
        poly=rng.uniform(0.2, 0.7),
    )
    cyto_od = rng.uniform(0.18, 0.30)
    mix = _cytoplasm_mix(rng, 0.85 if rng.random() < 0.7 else 0.15)
    rn = 7.6 * math.sqrt(rng.uniform(2.0, 3.0)) / um / 2
    binucleate = rng.random() < 0.3
    if binucleate:
        rn *= 0.85
    rmin = min(shape.a, shape.b)
    off_r = rng.uniform(0, 0.12) * rmin
    off_a = rng.uniform(0, 2 * math.pi)
    hx, hy = off_r * math.cos(off_a), off_r * math.sin(off_a)  # halo centre, local coords
    sep = rn * rng.uniform(0.9, 1.15) if binucleate else 0.0
    halo_r = min(rn * rng.uniform(1.8, 2.5) + sep, 0.7 * rmin)
    halo = _make_shape(rng, cv.lut, halo_r, aspect=(0.7, 1.0), irregularity=0.07, orders=(2, 3, 4))

    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.9)) * cv.medium[win]
    m = _coverage(d)
    dh = halo.sdf(xs - np.float32(hx), ys - np.float32(hy)) + 0.3 * cv.medium[win]
    hole = _coverage(dh, 0.6)
    ring_w = rng.uniform(2.0, 3.5) / um
    ring = _bump((dh - ring_w) * (1.0 / ring_w)) * (1.0 - hole)
    rim = _bump((d + 2.0) * 0.5)
    clear = rng.uniform(0.08, 0.35)
    dens = (
        (1.0 + 0.15 * cv.coarse[win]) * (1.0 - (1.0 - clear) * hole)
        + rng.uniform(0.35, 0.8) * ring
        + 0.5 * rim
    )
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)

    n_od = rng.uniform(0.95, 1.3)
    ang = rng.uniform(0, 2 * math.pi)
    centres = (
        [(hx, hy)]
        if not binucleate
        else [(hx + s * sep * math.cos(ang), hy + s * sep * math.sin(ang)) for s in (-1.0, 1.0)]
    )
    for ox, oy in centres:
        nshape = _make_shape(
            rng,
            cv.lut,
            rn * rng.uniform(0.92, 1.08),
            aspect=(0.7, 1.0),
            irregularity=0.07,
            orders=(3, 5, 7, 9),
        )
        _draw_nucleus(
            cv, cx + ox, cy + oy, nshape, n_od, vesicular=0.08, chromatin=0.3, granular=0.15
        )
    cv.record(win, m, "CIN1", "koilocyte")


def _draw_hsil(
    cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, um: float, diam_um: float
) -> None:
    """CIN2+ cell: small (15-26 um), nucleus 60-85% of the cell diameter, strongly
    hyperchromatic, irregular contour, coarse granular chromatin."""
    r = diam_um / um / 2
    shape = _make_shape(
        rng,
        cv.lut,
        r,
        aspect=(0.7, 1.0),
        irregularity=0.07,
        orders=(2, 3, 4),
        poly=rng.uniform(0.0, 0.5),
    )
    cyto_od = rng.uniform(0.26, 0.42)
    mix = _cytoplasm_mix(rng, 0.85 if rng.random() < 0.8 else 0.3)
    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.8)) * cv.medium[win]
    m = _coverage(d)
    dens = 1.0 + 0.12 * cv.coarse[win] + 0.4 * _bump((d + 1.5) * 0.6)
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)

    ratio = rng.uniform(0.6, 0.85)
    rn = r * ratio
    slack = max(0.0, min(shape.a, shape.b) - rn)
    off_r = rng.uniform(0, 0.5) * slack
    off_a = rng.uniform(0, 2 * math.pi)
    nshape = _make_shape(
        rng,
        cv.lut,
        rn,
        aspect=(0.7, 1.0),
        irregularity=rng.uniform(0.05, 0.11),
        orders=(2, 3, 4, 5, 7),
    )
    _draw_nucleus(
        cv,
        cx + off_r * math.cos(off_a),
        cy + off_r * math.sin(off_a),
        nshape,
        rng.uniform(1.15, 1.6),
        chromatin=0.3,
        granular=0.45,
    )
    cv.record(win, m, "CIN2+", "hsil")


def _draw_inflammatory(
    cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, um: float
) -> None:
    """Neutrophil (2-4 dark lobes in a pale cell, 9-12 um) or lymphocyte (7-9 um, round)."""
    if rng.random() < 0.7:
        r = rng.uniform(9.0, 12.0) / um / 2
        n_lobes = int(rng.integers(2, 5))
        lobe_r = rng.uniform(2.0, 2.8) / um / 2 * 1.3
        arc_r = 0.45 * r
        a0 = rng.uniform(0, 2 * math.pi)
        span = rng.uniform(1.6, 3.2)
        lobes = [
            (
                arc_r * math.cos(a0 + span * (i / max(1, n_lobes - 1) - 0.5)),
                arc_r * math.sin(a0 + span * (i / max(1, n_lobes - 1) - 0.5)),
            )
            for i in range(n_lobes)
        ]
        n_od = rng.uniform(0.9, 1.4)
        cyto_od, mix = rng.uniform(0.08, 0.16), (0.3, 0.5, 0.2)
    else:
        r = rng.uniform(7.0, 9.0) / um / 2
        lobes = [(rng.uniform(-0.1, 0.1) * r, rng.uniform(-0.1, 0.1) * r)]
        lobe_r = 0.8 * r
        n_od = rng.uniform(1.0, 1.4)
        cyto_od, mix = rng.uniform(0.06, 0.12), (0.3, 0.2, 0.5)
    w = cv.window(cx, cy, r + 2)
    if w is None:
        return
    win, xs, ys = w
    rr = np.sqrt(xs * xs + ys * ys)
    m = _coverage(rr - r + 0.4 * cv.medium[win])
    cv.add_mix(mix, win, np.float32(cyto_od) * m)
    nuc = None
    for lx, ly in lobes:
        dl = np.sqrt(np.square(xs - np.float32(lx)) + np.square(ys - np.float32(ly))) - lobe_r
        c = _coverage(dl, 0.7)
        nuc = c if nuc is None else np.maximum(nuc, c)
    cv.add(_HAEM, win, np.float32(n_od) * nuc * (1.0 + 0.1 * cv.fine[win]))
    cv.record(win, m, "normal", "inflammatory")


def _draw_debris(cv: _Canvas, rng: np.random.Generator, cx: float, cy: float, um: float) -> None:
    """A faint mucus strand (curved line) or a clump of small mixed-stain granules."""
    mix = tuple(float(x) for x in rng.dirichlet((1.0, 1.5, 1.5)))
    if rng.random() < 0.55:
        n = int(rng.integers(5, 11))
        step = rng.uniform(10, 25) / um
        ang = np.cumsum(rng.normal(0, 0.45, n)) + rng.uniform(0, 2 * math.pi)
        pts = np.stack([np.cumsum(step * np.cos(ang)), np.cumsum(step * np.sin(ang))], 1)
        pts = pts - pts.mean(axis=0)
        width = rng.uniform(1.2, 3.5) / um
        lo, hi = pts.min(axis=0) - 3 * width, pts.max(axis=0) + 3 * width
        mid = (lo + hi) / 2
        w = cv.window(cx + mid[0], cy + mid[1], (hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2)
        if w is None:
            return
        win, xs, ys = w
        xs, ys = xs + np.float32(mid[0]), ys + np.float32(mid[1])
        dist2 = None
        plist = pts.tolist()
        for (ax, ay), (bx, by) in zip(plist[:-1], plist[1:], strict=True):
            ex, ey = bx - ax, by - ay
            t = np.clip(((xs - ax) * ex + (ys - ay) * ey) / (ex * ex + ey * ey + 1e-9), 0, 1)
            dd = np.square(xs - ax - t * ex) + np.square(ys - ay - t * ey)
            dist2 = dd if dist2 is None else np.minimum(dist2, dd)
        prof = np.exp(-dist2 * (1.0 / (width * width))) * (1.0 + 0.3 * cv.medium[win])
        cv.add_mix(mix, win, np.float32(rng.uniform(0.06, 0.16)) * prof)
        cv.record(win, prof * 2.0, "normal", "debris")
    else:
        spread = rng.uniform(6, 18) / um
        w = cv.window(cx, cy, spread + 4)
        if w is None:
            return
        win, xs, ys = w
        acc = None
        for _ in range(int(rng.integers(3, 13))):
            gx, gy = rng.normal(0, spread / 2.5, 2).clip(-spread, spread).tolist()
            gr = rng.uniform(0.6, 2.2) / um / 2
            g = _coverage(np.sqrt(np.square(xs - gx) + np.square(ys - gy)) - gr, 0.8)
            g = g * rng.uniform(0.3, 1.0)
            acc = g if acc is None else np.maximum(acc, g)
        cv.add_mix(mix, win, np.float32(rng.uniform(0.4, 0.8)) * acc)
        cv.record(win, acc * 2.0, "normal", "debris")


def _positions(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """(n, 2) cell centres: a mix of uniform scatter and smear streaks (Gaussian clumps)."""
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


def _render(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Beer-Lambert rendering with tinted glass, uneven illumination (vignetting and a gentle
    gradient), white balance, focus blur and sensor noise. Returns (H, W, 3) uint8."""
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


def draw_field(
    rng: np.random.Generator,
    width: int,
    height: int,
    grade: str,
    stain: Stain,
    *,
    cells_per_field: tuple[int, int] = (40, 150),
    atypical_per_field: tuple[int, int] = (1, 5),
    um_per_px: float = 0.7,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one Pap-smear field photo of ``grade``.

    Args:
        rng: the photo's random stream (all randomness of the photo comes from it).
        width, height: photo size in px.
        grade: one of ``GRADES``: ``normal`` has no atypical cell, ``CIN1`` 1-5 koilocytes,
            ``CIN2+`` 1-5 HSIL cells (single or in groups of 2-3) plus 0-2 koilocytes.
        stain: the slide's stain.
        cells_per_field: cell count range for an 800x600 px field at 0.7 um/px (scaled by
            physical area otherwise); debris is drawn on top.
        atypical_per_field: range of atypical cells of ``grade`` in an abnormal photo.
        um_per_px: micrometres per pixel.

    Returns:
        ``(image, cells)``: image (H, W, 3) uint8 RGB; cells: one dict per drawn cell with
        ``x0, y0, x1, y1`` (int px, x1/y1 exclusive, clipped to the image), ``grade``, ``kind``.
    """
    if grade not in GRADES:
        raise MilCytoError(f"unknown grade {grade!r}; expected one of {', '.join(GRADES)}")
    um = float(um_per_px)
    cv = _Canvas(rng, width, height, stain)
    scale = width * height * um * um / _REF_FIELD_UM2

    n_total = max(3, round(int(rng.integers(cells_per_field[0], cells_per_field[1] + 1)) * scale))
    n_atyp = (
        0
        if grade == "normal"
        else int(rng.integers(atypical_per_field[0], atypical_per_field[1] + 1))
    )
    n_koilo = n_atyp if grade == "CIN1" else (int(rng.integers(0, 3)) if grade == "CIN2+" else 0)
    n_hsil = n_atyp if grade == "CIN2+" else 0
    n_inflam = round(rng.uniform(0.0, 0.3) ** 1.5 / 0.3**0.5 * n_total)
    n_para = min(int(rng.integers(0, 5)), round(0.06 * n_total))
    n_squam = max(1, n_total - n_hsil - n_koilo - n_inflam - n_para)
    p_superficial = rng.uniform(0.25, 0.75)

    squam_xy = _positions(rng, n_squam, width, height)
    for x, y in squam_xy:
        kind = "superficial" if rng.random() < p_superficial else "intermediate"
        _draw_squamous(cv, rng, float(x), float(y), kind, um)
    for x, y in _positions(rng, n_para, width, height):
        _draw_squamous(cv, rng, float(x), float(y), "parabasal", um)

    left = n_inflam
    while left > 0:  # inflammatory cells in small clusters
        size = min(left, int(rng.geometric(0.25)))
        ccx, ccy = rng.uniform(0, width), rng.uniform(0, height)
        spread = (4.0 + 3.0 * math.sqrt(size)) / um
        for _ in range(size):
            x = float(np.clip(ccx + rng.normal(0, spread), 0, width - 1))
            y = float(np.clip(ccy + rng.normal(0, spread), 0, height - 1))
            _draw_inflammatory(cv, rng, x, y, um)
        left -= size

    n_debris = int(rng.poisson(1.5 * max(scale, 0.2)))
    for x, y in rng.uniform((0, 0), (width, height), (n_debris, 2)):
        _draw_debris(cv, rng, float(x), float(y), um)

    margin_x = min(18.0 / um, width / 4)
    margin_y = min(18.0 / um, height / 4)

    def atypical_centre() -> tuple[float, float]:
        # half of them among the squamous cells (same smear streaks), half anywhere
        if rng.random() < 0.5:
            x, y = squam_xy[int(rng.integers(0, len(squam_xy)))] + rng.normal(0, 15.0 / um, 2)
        else:
            x, y = rng.uniform(0, width), rng.uniform(0, height)
        return (
            float(np.clip(x, margin_x, width - margin_x)),
            float(np.clip(y, margin_y, height - margin_y)),
        )

    for _ in range(n_koilo):
        _draw_koilocyte(cv, rng, *atypical_centre(), um)
    left = n_hsil
    while left > 0:  # HSIL cells alone or in small groups of 2-3
        size = min(left, 1 if rng.random() < 0.6 else int(rng.integers(2, 4)))
        x, y = atypical_centre()
        prev_r = 0.0
        for i in range(size):
            diam = rng.uniform(15.0, 26.0)
            if i:
                dist = (prev_r + diam / um / 2) * rng.uniform(0.75, 0.95)
                a = rng.uniform(0, 2 * math.pi)
                x = float(np.clip(x + dist * math.cos(a), 0, width - 1))
                y = float(np.clip(y + dist * math.sin(a), 0, height - 1))
            _draw_hsil(cv, rng, x, y, um, diam)
            prev_r = diam / um / 2
        left -= size

    return _render(cv, rng), cv.cells


# --------------------------------------------------------------------------------------------
# the data set on disk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientPlan:
    """One synthetic patient (one slide): grade, label sources, stain and photo indices."""

    patient_id: str
    histology: str
    cytology: str
    hpv: str
    stain: Stain
    images: tuple[int, ...]


@dataclass(frozen=True)
class _ImageTask:
    index: int
    rel_path: str
    out_path: str
    grade: str
    stain: Stain
    seed: int
    width: int
    height: int
    cells_per_field: tuple[int, int]
    atypical_per_field: tuple[int, int]
    um_per_px: float


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``n`` by ``fractions`` (deterministic, ties by order)."""
    fr = np.asarray(fractions, dtype=np.float64)
    exact = n * fr / fr.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(fr)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


def plan_patients(config: SynthConfig) -> list[PatientPlan]:
    """Patients of the data set, from the patient stream of ``config.seed`` (no image drawn).

    Photo counts follow ``images_per_patient`` (the last patient keeps at least the low end
    where ``n_images`` allows); grades follow ``class_fractions`` by largest remainder, then
    are shuffled. Cytology agrees with histology 80% of the time, else an adjacent grade;
    HPV is positive with probability 0.1 / 0.6 / 0.9 by grade.
    """
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    lo, hi = config.images_per_patient
    counts: list[int] = []
    while sum(counts) < config.n_images:
        counts.append(int(rng.integers(lo, hi + 1)))
    counts[-1] -= sum(counts) - config.n_images
    i = len(counts) - 2
    while counts[-1] < lo and i >= 0:  # top up a short last patient from the ones before
        if counts[i] > lo:
            counts[i] -= 1
            counts[-1] += 1
        else:
            i -= 1
    n_patients = len(counts)
    grades = [
        g
        for g, k in zip(GRADES, _allocate(n_patients, config.class_fractions), strict=True)
        for _ in range(k)
    ]
    grades = [grades[j] for j in rng.permutation(n_patients)]

    plans: list[PatientPlan] = []
    start = 0
    digits = max(4, len(str(n_patients)))
    for p, (grade, k) in enumerate(zip(grades, counts, strict=True)):
        stain = random_stain(rng)
        gi = GRADES.index(grade)
        if rng.random() < _CYTOLOGY_AGREEMENT:
            cyto = grade
        else:
            neighbours = [j for j in (gi - 1, gi + 1) if 0 <= j < len(GRADES)]
            cyto = GRADES[neighbours[int(rng.integers(0, len(neighbours)))]]
        hpv = "positive" if rng.random() < _HPV_POSITIVE_RATE[gi] else "negative"
        plans.append(
            PatientPlan(
                f"P{p + 1:0{digits}d}", grade, cyto, hpv, stain, tuple(range(start, start + k))
            )
        )
        start += k
    return plans


def _image_name(index: int, n_images: int) -> str:
    digits = max(5, len(str(n_images - 1)))
    return f"{IMAGES_DIR}/img_{index:0{digits}d}.png"


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array as a PNG with no metadata (byte-reproducible).

    Every row uses the PNG "up" filter and zlib's run-length strategy: files about as small as
    Pillow's adaptive filtering gives on these noisy photos, at well under half the time.
    Any PNG reader (Pillow included) decodes them.
    """
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w, _ = img.shape
    flat = np.ascontiguousarray(img).reshape(h, 3 * w)
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 2  # filter type "up": byte minus the byte above
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = z.compress(rows.tobytes()) + z.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        )


def _make_image(task: _ImageTask) -> list[tuple[Any, ...]]:
    """Pool worker: draw one photo, write its PNG, return its ``cells.csv`` rows."""
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(1, task.index)))
    img, cells = draw_field(
        rng,
        task.width,
        task.height,
        task.grade,
        task.stain,
        cells_per_field=task.cells_per_field,
        atypical_per_field=task.atypical_per_field,
        um_per_px=task.um_per_px,
    )
    write_png(task.out_path, img)
    return [
        (task.rel_path, c["x0"], c["y0"], c["x1"], c["y1"], c["grade"], c["kind"]) for c in cells
    ]


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_existing(out_dir: Path, config: SynthConfig) -> bool:
    """True when ``out_dir`` already holds this data set; raise when it holds anything else."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise MilCytoError(f"{out_dir} exists and is not a folder; choose another output path")
    cfg_path = out_dir / CONFIG_FILE
    if cfg_path.is_file():
        found = _read_config(cfg_path)
        want = config.to_json_dict()
        if found == want:
            return True
        diff = sorted(
            k for k in set(want) | set(found or {}) if (found or {}).get(k) != want.get(k)
        )
        raise MilCytoError(
            f"{out_dir} holds a synthetic data set made with a different config "
            f"(differs in: {', '.join(diff) or 'unreadable ' + CONFIG_FILE}); delete that "
            "folder or choose another output folder"
        )
    if any(out_dir.iterdir()):
        raise MilCytoError(
            f"{out_dir} exists, is not empty and has no {CONFIG_FILE}, so it is not a "
            "mil-cyto synthetic data set; choose a new or empty output folder"
        )
    return False


def _draw_images(
    tmp: Path, plans: list[PatientPlan], config: SynthConfig, workers: int, progress: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[str, ...]]]:
    """Draw every photo of ``plans`` into ``tmp``; returns the cell rows and manifest rows."""
    tasks: list[_ImageTask] = []
    manifest: list[tuple[str, ...]] = []
    for plan in plans:
        for index in plan.images:
            rel = _image_name(index, config.n_images)
            manifest.append((rel, plan.patient_id, plan.histology, plan.cytology, plan.hpv))
            tasks.append(
                _ImageTask(
                    index,
                    rel,
                    str(tmp / rel),
                    plan.histology,
                    plan.stain,
                    config.seed,
                    config.width,
                    config.height,
                    config.cells_per_field,
                    config.atypical_per_field,
                    config.um_per_px,
                )
            )
    n_workers = max(1, min(int(workers), len(tasks)))
    cell_rows: list[tuple[Any, ...]] = []
    with tqdm(total=len(tasks), disable=not progress, unit="img", desc="synthetic fields") as bar:
        if n_workers == 1:
            for rows in map(_make_image, tasks):
                cell_rows.extend(rows)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(4, len(tasks) // (8 * n_workers)))
            with ctx.Pool(n_workers) as pool:
                for rows in pool.imap(_make_image, tasks, chunksize=chunk):
                    cell_rows.extend(rows)
                    bar.update(1)
    return cell_rows, manifest


def generate_dataset(
    out_dir: Path,
    config: SynthConfig,
    *,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set of ``config`` to ``out_dir`` and return ``out_dir``.

    Layout: ``images/img_00000.png ...``, ``manifest.csv`` (image, patient_id, histology,
    cytology, hpv), ``cells.csv`` (image, x0, y0, x1, y1, grade, kind; one row per drawn cell)
    and ``synth_config.json``. The result is byte-identical for the same config whatever
    ``workers`` is. The data set is built in ``<out_dir>.partial-<pid>`` and renamed at the end.
    An existing ``out_dir`` with the same config is returned untouched (cache hit).
    ``workers > 1`` uses a spawn-context process pool, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.

    Raises:
        MilCytoError: ``out_dir`` holds another config or unrelated files, or is not writable.
    """
    out_dir = Path(out_dir)
    if _check_existing(out_dir, config):
        return out_dir
    plans = plan_patients(config)
    try:
        with atomic_dir(out_dir) as tmp:
            (tmp / IMAGES_DIR).mkdir()
            cell_rows, manifest = _draw_images(tmp, plans, config, workers, progress)
            write_csv(tmp / MANIFEST_FILE, MANIFEST_COLUMNS, manifest)
            write_csv(tmp / CELLS_FILE, CELL_COLUMNS, cell_rows)
            (tmp / CONFIG_FILE).write_text(
                json.dumps(config.to_json_dict(), indent=2, sort_keys=True) + "\n",
                encoding="utf-8",
            )
    except OSError:
        # Another process finished the same folder first: accept it if it is ours.
        if _check_existing(out_dir, config):
            return out_dir
        raise
    return out_dir
