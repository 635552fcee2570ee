"""Suspect cells from a map: peaks of the smoothed map, each refined to a detected nucleus,
or, when the instances are nucleus crops, the scored instances themselves.

Nuclei come from scikit-image's Laplacian-of-Gaussian blob detector on the haematoxylin
channel (colour deconvolution, ``rgb2hed``). No annotation is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2hed
from skimage.feature import blob_log, peak_local_max
from skimage.filters import gaussian


@dataclass
class Nuclei:
    """``centres`` ``(K, 2)`` float x, y pixels; ``radii`` ``(K,)`` px; ``mass`` ``(K,)``
    haematoxylin density x area (a prominence score, used only to break ties)."""

    centres: np.ndarray
    radii: np.ndarray
    mass: np.ndarray

    @property
    def boxes(self) -> np.ndarray:
        """``(K, 4)`` x0, y0, x1, y1 around each nucleus."""
        r = self.radii[:, None]
        return np.concatenate([self.centres - r, self.centres + r], axis=1)


@dataclass
class Detections:
    """Scored suspect cells: ``points`` ``(K, 2)`` x, y; ``boxes`` ``(K, 4)`` x0, y0, x1, y1;
    ``scores`` ``(K,)`` the map's (smoothed) value at the peak, best first."""

    points: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 2)), np.zeros((0, 4)), np.zeros(0))

    def to_array(self) -> np.ndarray:
        """``(K, 7)`` float32: x, y, x0, y0, x1, y1, score."""
        return np.concatenate([self.points, self.boxes, self.scores[:, None]], 1).astype(np.float32)

    @classmethod
    def from_array(cls, array: np.ndarray) -> Detections:
        a = np.asarray(array, dtype=np.float64).reshape(-1, 7)
        return cls(a[:, :2], a[:, 2:6], a[:, 6])


def instance_detections(
    centres: np.ndarray, boxes: np.ndarray, scores: np.ndarray, max_detections: int = 30
) -> Detections:
    """Instances that already are cells (nucleus crops) as the detections themselves: each
    at its nucleus ``centres`` ``(N, 2)`` x, y, with its crop's ``boxes`` ``(N, 4)`` and
    tile ``scores`` ``(N,)``; the ``max_detections`` best, best first."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max_detections]
    return Detections(
        np.asarray(centres, dtype=np.float64)[order],
        np.asarray(boxes, dtype=np.float64)[order],
        np.asarray(scores, dtype=np.float64)[order],
    )


def find_nuclei(
    photo: np.ndarray,
    *,
    min_sigma: float = 2.0,
    max_sigma: float = 8.0,
    num_sigma: int = 4,
    threshold: float = 0.02,
) -> Nuclei:
    """Nuclei in an ``(H, W, 3)`` uint8 photo: LoG blobs of the haematoxylin density.

    ``threshold`` is blob_log's on the density (optical-density units); sigmas in px (a
    blob's radius is sigma x sqrt 2).
    """
    density = rgb2hed(photo)[..., 0]
    density = density - density.min()
    blobs = blob_log(
        density, min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=num_sigma, threshold=threshold
    )
    if len(blobs) == 0:
        return Nuclei(np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    ys, xs, sigmas = blobs[:, 0], blobs[:, 1], blobs[:, 2]
    radii = sigmas * np.sqrt(2)
    smooth = gaussian(density, sigma=min_sigma)
    mass = smooth[ys.astype(int), xs.astype(int)] * radii**2
    return Nuclei(np.stack([xs, ys], 1).astype(np.float64), radii, mass)


def tile_map_detections(
    heat: np.ndarray, nuclei: Nuclei, tile_size: int, max_detections: int = 30
) -> Detections:
    """Suspect cells of a tile-level map (``heat`` constant per grid tile, from
    :func:`explain.maps.tile_heatmap`): peaks of the map smoothed by a quarter tile, a third
    of a tile apart, each moved to a detected nucleus of the tile, nuclei within one tile
    tying on the map and going to the most prominent. ``python -m explain`` and the review
    app both find suspects of grid runs this way."""
    return detect_cells(
        heat,
        nuclei,
        sigma=tile_size / 4,
        radius=tile_size / 3,
        local_sigma=0.0,
        max_detections=max_detections,
    )


def detect_cells(
    heat: np.ndarray,
    nuclei: Nuclei,
    *,
    sigma: float,
    radius: float,
    local_sigma: float | None = None,
    max_detections: int = 30,
) -> Detections:
    """Peaks of the ``(H, W)`` raw map (NaN = no tile) smoothed by ``sigma`` px, at least
    ``radius`` px apart, best first; each moves to the nucleus within ``radius`` px where
    the map smoothed by ``local_sigma`` (default ``sigma``; 0 for a map constant per
    tile) is highest, ties going to the most prominent nucleus; each nucleus is used
    once. A peak without a nucleus stays a point with a box of ``radius``. Scores are the
    smoothed map at the peak: comparable across photos when the raw maps are."""
    finite = np.isfinite(heat)
    if not finite.any():
        return Detections.empty()
    filled = np.where(finite, heat, np.nanmin(heat)).astype(np.float64)
    floor = float(filled.min())
    smooth = gaussian(filled, sigma=sigma, mode="constant", cval=floor) if sigma > 0 else filled
    local_sigma = sigma if local_sigma is None else local_sigma
    local = smooth
    if local_sigma != sigma:
        local = gaussian(filled, sigma=local_sigma) if local_sigma > 0 else filled
    peaks = peak_local_max(
        np.where(finite, smooth, smooth.min()),
        min_distance=max(1, int(radius)),
        num_peaks=max_detections,
        exclude_border=False,
    )  # (P, 2) row, col, highest first
    h, w = heat.shape
    cx = np.clip(nuclei.centres[:, 0].round().astype(int), 0, w - 1)
    cy = np.clip(nuclei.centres[:, 1].round().astype(int), 0, h - 1)
    at_nucleus = local[cy, cx]
    span = float(np.ptp(local[finite])) or 1.0
    used = np.zeros(len(nuclei.radii), dtype=bool)
    points, boxes, scores = [], [], []
    for row, col in peaks:
        dist = np.hypot(nuclei.centres[:, 0] - col, nuclei.centres[:, 1] - row)
        near = np.flatnonzero((dist <= radius) & ~used)
        if len(near):
            # map value first (rounded so a per-tile plateau ties), prominence second
            key = np.lexsort((nuclei.mass[near], np.round(at_nucleus[near] / span, 6)))
            k = near[key[-1]]
            used[k] = True
            points.append(nuclei.centres[k])
            boxes.append(nuclei.boxes[k])
        else:
            points.append(np.array([col, row], dtype=np.float64))
            boxes.append(
                np.array([col - radius / 2, row - radius / 2, col + radius / 2, row + radius / 2])
            )
        scores.append(smooth[row, col])
    if not scores:
        return Detections.empty()
    return Detections(np.array(points), np.array(boxes), np.array(scores))
