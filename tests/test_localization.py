"""Localization metrics from tile scores against atypical-cell boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mil_cyto.errors import MilCytoError
from mil_cyto.localization import (
    box_cover,
    grid_localization,
    localization_metrics,
    read_cell_boxes,
    scores_on_grid,
    tile_labels,
)

TILES = np.array(
    [
        [0, 0, 32, 32],
        [32, 0, 64, 32],
        [0, 32, 32, 64],
        [32, 32, 64, 64],
    ]
)


def test_box_cover_values() -> None:
    boxes = np.array(
        [
            [8, 8, 24, 24],  # wholly inside tile 0
            [24, 0, 40, 16],  # half in tile 0, half in tile 1
            [28, 28, 36, 36],  # a quarter in each tile
        ],
        dtype=float,
    )
    cover = box_cover(TILES, boxes)
    expected = np.array(
        [
            [1.0, 0.5, 0.25],
            [0.0, 0.5, 0.25],
            [0.0, 0.0, 0.25],
            [0.0, 0.0, 0.25],
        ]
    )
    np.testing.assert_allclose(cover, expected)


def test_box_cover_no_boxes() -> None:
    assert box_cover(TILES, np.zeros((0, 4))).shape == (4, 0)


def test_box_cover_degenerate_box_is_finite() -> None:
    cover = box_cover(TILES, np.array([[10.0, 10.0, 10.0, 10.0]]))
    assert np.isfinite(cover).all()


def test_tile_labels_positive_ignored_negative() -> None:
    # box 16 px wide: 4 px (cover 0.25, the threshold) in tile 0, 12 px in tile 1
    boxes = np.array([[28.0, 4.0, 44.0, 20.0]])
    labels = tile_labels(TILES, boxes)
    assert labels.dtype == np.int8
    assert labels.tolist() == [1, 1, 0, 0]
    # a box barely touching tile 0 (2/16 of it) is ignored there, positive in tile 1
    labels = tile_labels(TILES, np.array([[30.0, 4.0, 46.0, 20.0]]))
    assert labels.tolist() == [-1, 1, 0, 0]
    # the threshold is a parameter
    labels = tile_labels(TILES, np.array([[30.0, 4.0, 46.0, 20.0]]), min_cover=0.1)
    assert labels.tolist() == [1, 1, 0, 0]


def test_tile_labels_without_boxes_are_negative() -> None:
    assert tile_labels(TILES, np.zeros((0, 4))).tolist() == [0, 0, 0, 0]


def _grid(n: int = 4, size: int = 32) -> np.ndarray:
    return np.array(
        [
            [x, y, x + size, y + size]
            for y in range(0, n * size, size)
            for x in range(0, n * size, size)
        ]
    )


def test_instance_auroc_perfect_ranking_and_pointing_game() -> None:
    coords = {"a": _grid(), "b": _grid()}
    boxes = {"a": np.array([[4.0, 4.0, 20.0, 20.0]]), "b": np.array([[68.0, 68.0, 90.0, 90.0]])}
    positives = {k: tile_labels(coords[k], boxes[k]) == 1 for k in coords}
    scores = {k: np.where(positives[k], 5.0, 0.0) + 0.01 * np.arange(16) for k in coords}
    m = localization_metrics(coords, scores, boxes, ["a", "b"])
    assert m["instance_auroc"] == pytest.approx(1.0)
    assert m["pointing_game"] == pytest.approx(1.0)
    assert m["n_images"] == 2
    assert m["n_positive_tiles"] == 2
    assert m["n_negative_tiles"] == 30


def test_instance_auroc_reversed_ranking_is_zero() -> None:
    coords = {"a": _grid()}
    boxes = {"a": np.array([[4.0, 4.0, 20.0, 20.0]])}
    scores = {"a": np.where(tile_labels(coords["a"], boxes["a"]) == 1, -1.0, 1.0)}
    m = localization_metrics(coords, scores, boxes, ["a"])
    assert m["instance_auroc"] == pytest.approx(0.0)
    assert m["pointing_game"] == 0.0


def test_instance_auroc_random_scores_is_near_half() -> None:
    rng = np.random.default_rng(0)
    images = [f"img{i}" for i in range(60)]
    coords = {k: _grid(8) for k in images}
    boxes = {
        k: np.array([[x, y, x + 12, y + 12] for x, y in rng.integers(0, 240, (3, 2))], dtype=float)
        for k in images
    }
    scores = {k: rng.random(64) for k in images}
    m = localization_metrics(coords, scores, boxes, images)
    assert m["instance_auroc"] == pytest.approx(0.5, abs=0.08)
    constant = localization_metrics(coords, {k: np.zeros(64) for k in images}, boxes, images)
    assert constant["instance_auroc"] == pytest.approx(0.5)


def test_pointing_game_counts() -> None:
    coords = {k: _grid() for k in "abcd"}
    box = np.array([[4.0, 4.0, 20.0, 20.0]])  # inside tile 0
    boxes = {"a": box, "b": box, "c": box, "d": np.zeros((0, 4))}
    hit = np.zeros(16)
    hit[0] = 1.0
    miss = np.zeros(16)
    miss[15] = 1.0
    scores = {"a": hit, "b": miss, "c": hit, "d": hit}
    m = localization_metrics(coords, scores, boxes, ["a", "b", "c", "d", "unannotated"])
    assert m["n_images"] == 3  # d has no atypical box, "unannotated" none at all
    assert m["pointing_game"] == pytest.approx(2 / 3)


def test_pointing_game_counts_thin_overlap_as_hit() -> None:
    coords = {"a": _grid()}
    boxes = {"a": np.array([[30.0, 4.0, 46.0, 20.0]])}  # 1/8 in tile 0, rest in tile 1
    scores = {"a": np.eye(16)[0]}
    assert localization_metrics(coords, scores, boxes, ["a"])["pointing_game"] == 1.0


def test_no_annotated_abnormal_images() -> None:
    m = localization_metrics({"a": _grid()}, {"a": np.zeros(16)}, {}, ["a"])
    assert m == {"instance_auroc": None, "pointing_game": None, "n_images": 0}


def test_read_cell_boxes_keeps_atypical_only(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text(
        "image,x0,y0,x1,y1,grade\n"
        "a.png,1,2,11,12,CIN2\n"
        "a.png,5,5,9,9,normal\n"
        "a.png,20,20,30,35,LSIL\n"
        "b.png,0,0,4,4,NILM\n"
        "c.png,3.5,4.5,7,8,HSIL\n",
        encoding="utf-8",
    )
    boxes = read_cell_boxes(path)
    assert set(boxes) == {"a.png", "c.png"}
    np.testing.assert_array_equal(boxes["a.png"], [[1, 2, 11, 12], [20, 20, 30, 35]])
    assert boxes["a.png"].dtype == np.float64
    np.testing.assert_array_equal(boxes["c.png"], [[3.5, 4.5, 7, 8]])


def test_read_cell_boxes_bad_grade_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text(
        "image,x0,y0,x1,y1,grade\na.png,1,2,11,12,CIN2\na.png,1,2,11,12,weird\n",
        encoding="utf-8",
    )
    with pytest.raises(MilCytoError, match="line 3") as info:
        read_cell_boxes(path)
    assert str(path) in str(info.value) and "weird" in str(info.value)


def test_read_cell_boxes_bad_number_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text("image,x0,y0,x1,y1,grade\na.png,1,two,11,12,CIN2\n", encoding="utf-8")
    with pytest.raises(MilCytoError, match="line 2"):
        read_cell_boxes(path)


def test_read_cell_boxes_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text("image,x0,y0,x1,y1\na.png,1,2,11,12\n", encoding="utf-8")
    with pytest.raises(MilCytoError, match="grade"):
        read_cell_boxes(path)


def test_read_cell_boxes_short_row(tmp_path: Path) -> None:
    path = tmp_path / "cells.csv"
    path.write_text("image,x0,y0,x1,y1,grade\na.png,1,2\n", encoding="utf-8")
    with pytest.raises(MilCytoError, match="line 2"):
        read_cell_boxes(path)


def test_read_cell_boxes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="cells.csv"):
        read_cell_boxes(tmp_path / "cells.csv")


def test_scores_on_grid_keeps_a_grid_bags_own_scores() -> None:
    tiles = _grid(4, 16)  # a 64 x 64 photo in 16-px tiles
    keep = np.array([i not in (5, 10) for i in range(16)])  # two glass tiles were dropped
    values = np.arange(16, dtype=float)
    grid, scores = scores_on_grid(tiles[keep], values[keep], (64, 64), 16)
    np.testing.assert_array_equal(grid, tiles[keep])
    np.testing.assert_allclose(scores, values[keep])


def test_scores_on_grid_means_overlapping_instances_over_each_tile() -> None:
    # two 16-px crops overlapping by 8 px, on a 32 x 32 photo's 16-px grid
    crops = np.array([[0, 0, 16, 16], [8, 0, 24, 16]])
    grid, scores = scores_on_grid(crops, np.array([4.0, 2.0]), (32, 32), 16)
    # tile 0: 8 columns of 4, 8 of the mean 3; tile 1: 8 columns of 2 (8 uncovered)
    np.testing.assert_array_equal(grid, [[0, 0, 16, 16], [16, 0, 32, 16]])
    np.testing.assert_allclose(scores, [3.5, 2.0])


def test_grid_localization_counts_each_cell_once_not_per_overlapping_crop() -> None:
    # 32-px crops centred on 'nuclei' every 8 px of a 128 x 128 photo: each atypical cell's
    # box is a quarter covered by many crops, and only the crop centred on it scores high
    centres = [(x, y) for x in range(16, 113, 8) for y in range(16, 113, 8)]
    crops = np.array([[x - 16, y - 16, x + 16, y + 16] for x, y in centres])
    images = [f"img{i}" for i in range(8)]
    rng = np.random.default_rng(0)
    coords, scores, boxes = {}, {}, {}
    for image in images:
        x, y = centres[rng.integers(len(centres))]
        boxes[image] = np.array([[x - 10, y - 10, x + 10, y + 10]], dtype=float)
        centred = (crops[:, 0] + 16 == x) & (crops[:, 1] + 16 == y)
        coords[image], scores[image] = crops, np.where(centred, 20.0, 1.0) + rng.random(len(crops))
    sizes = dict.fromkeys(images, (128, 128))
    m = grid_localization(coords, scores, sizes, boxes, images, 32)
    own = m["per_instance"]
    assert own["pointing_game"] == 1.0 and m["pointing_game"] == 1.0
    assert own["instance_auroc"] < 0.8  # the neighbours' crops are positives scored low
    assert m["instance_auroc"] > 0.95
    assert m["tiles"] == "32-px grid"
    uniform = {k: np.ones(len(crops)) for k in images}
    assert grid_localization(coords, uniform, sizes, boxes, images, 32)["instance_auroc"] == 0.5
