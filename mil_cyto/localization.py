"""Localization from tile scores against cell boxes (never used in training).

An annotations CSV has ``image, x0, y0, x1, y1, grade`` in the photo's pixels; cells whose
grade is not ``normal`` are the atypical ones.

The metrics are taken on the photo's grid of non-overlapping tiles (:func:`scores_on_grid`),
whatever the model's instances were: grid tiles, or crops centred on detected nuclei, which
overlap (on the default synthetic test photos 298 crops cover a quarter of one of the 120
atypical cells' boxes, up to 7 for one koilocyte), so crop-level figures count a cell once
per crop around it, a number the nucleus detector and the cell density set.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from mil_cyto.data.tiling import TilingConfig, box_sums, grid_coords, paint_tiles
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import parse_grade

MIN_COVER = 0.25
"""A tile is a positive instance when it covers at least this share of an atypical cell's
box; tiles that touch an atypical box with less are left out of the instance AUROC (they
hold a sliver of cytoplasm, neither clearly positive nor negative)."""


@dataclass(frozen=True)
class CellBox:
    """An annotated cell: box ``x0, y0, x1, y1`` in photo pixels, its grade and kind."""

    box: tuple[float, float, float, float]
    grade: str
    kind: str = ""

    @property
    def atypical(self) -> bool:
        return self.grade != "normal"


def read_cells(path: Path) -> dict[str, list[CellBox]]:
    """Every annotated cell per image id from a ``cells.csv`` (``image, x0, y0, x1, y1, grade``
    and an optional ``kind``); grades are parsed like the training's labels."""
    path = Path(path)
    cells: dict[str, list[CellBox]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "x0", "y0", "x1", "y1", "grade"} - set(reader.fieldnames or [])
        if missing:
            raise MilCytoError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            try:
                grade = parse_grade(row["grade"])
                x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            except (ValueError, TypeError) as err:
                raise MilCytoError(
                    f"{path} line {reader.line_num}: {err or 'missing cells'}"
                ) from None
            cells.setdefault(row["image"], []).append(
                CellBox((x0, y0, x1, y1), grade, row.get("kind") or "")
            )
    return cells


def read_cell_boxes(path: Path) -> dict[str, np.ndarray]:
    """Atypical cell boxes per image id: ``{image: (M, 4) float x0, y0, x1, y1}``."""
    path = Path(path)
    if not path.is_file():
        raise MilCytoError(f"cell annotations {path} not found; fix --cells or leave it out")
    boxes = {
        image: [c.box for c in cells if c.atypical] for image, cells in read_cells(path).items()
    }
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items() if v}


def box_cover(tiles: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each box's area inside each tile: ``(N_tiles, M_boxes)`` in [0, 1]."""
    if len(boxes) == 0:
        return np.zeros((len(tiles), 0))
    t = tiles[:, None, :].astype(np.float64)
    b = boxes[None, :, :]
    w = np.clip(np.minimum(t[..., 2], b[..., 2]) - np.maximum(t[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(t[..., 3], b[..., 3]) - np.maximum(t[..., 1], b[..., 1]), 0, None)
    area = np.maximum((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 1e-9)
    return w * h / area


def centres_in_boxes(tiles: ArrayLike, boxes: ArrayLike) -> np.ndarray:
    """Per tile ``(N, 4)``: whether its centre lies in any of ``boxes`` ``(M, 4)`` (edges
    included); ``(N,)`` bool."""
    tiles = np.asarray(tiles, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (tiles[:, None, 0] + tiles[:, None, 2]) / 2
    cy = (tiles[:, None, 1] + tiles[:, None, 3]) / 2
    inside = (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])
    return np.any(inside, axis=1)


def tile_labels(tiles: np.ndarray, boxes: np.ndarray, min_cover: float = MIN_COVER) -> np.ndarray:
    """Per tile: 1 = positive, 0 = negative, -1 = ignored (touches an atypical box thinly)."""
    cover = box_cover(tiles, boxes)
    if cover.shape[1] == 0:
        return np.zeros(len(tiles), dtype=np.int8)
    best = cover.max(axis=1)
    labels = np.where(best >= min_cover, 1, np.where(best > 0, -1, 0))
    return labels.astype(np.int8)


def localization_metrics(
    coords: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    boxes: Mapping[str, np.ndarray],
    abnormal_images: list[str],
    min_cover: float = MIN_COVER,
) -> dict[str, float | int | None]:
    """Instance AUROC and pointing game over abnormal images that have atypical boxes.

    ``scores`` must be comparable across photos (e.g. attention logits, or attention times
    the bag size); each photo's ``coords`` are ``(N, 4)`` tile boxes.
    """
    pooled_scores, pooled_labels, hits, n_images = [], [], 0, 0
    for image in abnormal_images:
        atypical = boxes.get(image)
        if atypical is None or len(atypical) == 0:
            continue
        n_images += 1
        labels = tile_labels(coords[image], atypical, min_cover)
        keep = labels >= 0
        pooled_scores.append(scores[image][keep])
        pooled_labels.append(labels[keep])
        top = int(np.argmax(scores[image]))
        hits += bool(box_cover(coords[image][top : top + 1], atypical).max() > 0)
    if n_images == 0:
        return {"instance_auroc": None, "pointing_game": None, "n_images": 0}
    y = np.concatenate(pooled_labels)
    s = np.concatenate(pooled_scores)
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None
    return {
        "instance_auroc": auroc,
        "pointing_game": hits / n_images,
        "n_images": n_images,
        "n_positive_tiles": int(y.sum()),
        "n_negative_tiles": int((y == 0).sum()),
        "min_cover": min_cover,
    }


def scores_on_grid(
    coords: np.ndarray, scores: np.ndarray, size_hw: tuple[int, int], tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """Instance scores on ``(N, 4)`` boxes (which may overlap) -> the photo's grid of
    ``tile``-px tiles (:func:`mil_cyto.data.tiling.grid_coords`, stride = tile): the
    instances' scores are painted into a score map (their mean where boxes overlap, as the
    attention maps show it) and each grid tile takes the map's mean over the pixels it covers.
    Grid tiles no instance touches are left out. Returns ``(G, 4)`` int32 boxes and ``(G,)``
    float64 scores; on a grid bag of the same tile size each tile keeps its own score."""
    height, width = size_hw
    heat = paint_tiles(size_hw, coords, scores)
    grid = grid_coords(height, width, TilingConfig(tile, tile))
    pixels = box_sums(np.isfinite(heat), grid, np.int64)
    keep = pixels > 0
    return grid[keep], box_sums(np.nan_to_num(heat), grid)[keep] / pixels[keep]


def grid_localization(
    coords: Mapping[str, np.ndarray],
    scores: Mapping[str, np.ndarray],
    sizes: Mapping[str, tuple[int, int]],
    boxes: Mapping[str, np.ndarray],
    abnormal_images: list[str],
    tile: int,
) -> dict[str, object]:
    """:func:`localization_metrics` on each photo's ``tile``-px grid (:func:`scores_on_grid`;
    ``sizes`` holds each photo's ``(height, width)``), with the same figures taken on the
    instances themselves under ``"per_instance"``."""
    grid_boxes, grid_values = {}, {}
    for image in abnormal_images:
        if image in boxes:
            grid_boxes[image], grid_values[image] = scores_on_grid(
                coords[image], scores[image], sizes[image], tile
            )
    metrics: dict[str, object] = dict(
        localization_metrics(grid_boxes, grid_values, boxes, abnormal_images)
    )
    metrics["tiles"] = f"{tile}-px grid"
    own = localization_metrics(coords, scores, boxes, abnormal_images)
    metrics["per_instance"] = {k: own[k] for k in ("instance_auroc", "pointing_game")}
    return metrics
