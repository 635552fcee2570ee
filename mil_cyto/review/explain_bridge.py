"""The ``explain`` package, reached lazily: the app works (and says so) without it.

``explain.attributions.attribute_photo(model, tiles, coords, method, target, size_hw=...)``
returns ``(pixel_map (H, W) float32, tile_scores (N,))``; ``explain.attributions.list_methods``
names the methods. Suspect cells come from ``explain.detect`` when it offers
``detect_suspects``/``detect_cells`` (boxes ``(M, 4)`` and scores ``(M,)``).
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


def suspect_cells(photo: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Suspect cells found by ``explain.detect`` from a score map ``(H, W)``: boxes ``(M, 4)``
    ``x0, y0, x1, y1`` and scores ``(M,)``; None when ``explain.detect`` is absent or offers
    no detector this app knows."""
    try:
        detect = _module("explain.detect")
    except MilCytoError:
        return None
    for name in ("detect_suspects", "detect_cells", "suspect_cells"):
        fn = getattr(detect, name, None)
        if fn is not None:
            break
    else:
        return None
    result = fn(photo, heat)
    boxes, scores = _boxes_and_scores(result)
    return boxes, scores


def _boxes_and_scores(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """Accept ``(boxes, scores)``, an object with ``boxes``/``scores``, or a list of such."""
    if isinstance(result, tuple) and len(result) == 2:
        boxes, scores = result
    elif hasattr(result, "boxes"):
        boxes, scores = result.boxes, getattr(result, "scores", None)
    else:
        items = list(result)
        boxes = [getattr(i, "box", None) or getattr(i, "xyxy", None) for i in items]
        scores = [getattr(i, "score", 0.0) for i in items]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.zeros(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64)
    return boxes, scores
