"""The ``explain`` package, reached lazily: the app works (and says so) without it.

``explain.attributions.attribute_photo(model, tiles, coords, method, target, size_hw=...)``
returns ``(pixel_map (H, W) float32, tile_scores (N,))``; ``explain.attributions.list_methods``
names the methods. Suspect cells come from ``explain.detect`` (``find_nuclei`` and
``detect_cells`` on a tile-score map from ``explain.maps.tile_heatmap``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mil_cyto.errors import MilCytoError

UNAVAILABLE = "explain package not available"


def _module(name: str) -> ModuleType:
    """Import ``name`` or raise MilCytoError saying what is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as err:  # the package, or something it needs, is absent
        raise MilCytoError(
            f"{UNAVAILABLE} ({name}: {err}); install mil-cyto with its explain/ package"
        ) from None


def status() -> str | None:
    """None when attributions can be computed, else a one-line reason."""
    try:
        _module("explain.attributions")
    except MilCytoError as err:
        return str(err)
    return None


def methods() -> list[str]:
    """Attribution methods ``explain`` offers (Captum ones and the model's own scores)."""
    return list(_module("explain.attributions").list_methods())


@dataclass(frozen=True)
class Attribution:
    """``pixel_map`` ``(H, W)`` float32 (signed for some methods, NaN off-tile) and
    ``tile_scores`` ``(N,)``; ``signed`` when negative values carry meaning."""

    method: str
    target: int
    pixel_map: np.ndarray
    tile_scores: np.ndarray

    @property
    def signed(self) -> bool:
        finite = self.pixel_map[np.isfinite(self.pixel_map)]
        return bool(finite.size and finite.min() < 0)


def attribute(
    model: Any,
    tiles: np.ndarray,
    coords: np.ndarray,
    method: str,
    target: int,
    size_hw: tuple[int, int],
) -> Attribution:
    """One photo's attribution of class ``target`` by ``method`` (see module docstring)."""
    attributions = _module("explain.attributions")
    pixel_map, tile_scores = attributions.attribute_photo(
        model, tiles, coords, method=method, target=target, size_hw=size_hw
    )
    return Attribution(
        method, target, np.asarray(pixel_map, dtype=np.float32), np.asarray(tile_scores)
    )


def suspect_cells(
    photo: np.ndarray,
    coords: np.ndarray,
    tile_scores: np.ndarray,
    tile_size: int,
    *,
    max_detections: int = 30,
    instances: str = "grid",
) -> tuple[np.ndarray, np.ndarray]:
    """Suspect cells, as ``python -m explain`` finds them for tile-level maps: where a
    tile-score map of grid tiles peaks, each moved to a detected nucleus
    (``explain.detect``); for nucleus crops (``instances="cells"``), the best crops
    themselves, each already one cell.

    ``photo`` ``(H, W, 3)`` uint8, ``coords`` ``(N, 4)``, ``tile_scores`` ``(N,)`` (e.g.
    attention logits). Returns boxes ``(M, 4)`` ``x0, y0, x1, y1`` and scores ``(M,)``,
    best first.

    Raises:
        MilCytoError: ``explain`` is not available.
    """
    detect = _module("explain.detect")
    if instances == "cells":
        boxes = np.asarray(coords, dtype=np.float64).reshape(-1, 4)
        middles = (boxes[:, :2] + boxes[:, 2:]) / 2
        found = detect.instance_detections(middles, boxes, tile_scores, max_detections)
    else:
        maps = _module("explain.maps")
        heat = maps.tile_heatmap(photo.shape[:2], coords, tile_scores)
        found = detect.tile_map_detections(
            heat, detect.find_nuclei(photo), tile_size, max_detections
        )
    return np.asarray(found.boxes, dtype=np.float64).reshape(-1, 4), np.asarray(found.scores)
