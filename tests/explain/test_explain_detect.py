"""explain.detect: nuclei from haematoxylin blobs, map peaks refined to nuclei."""

from __future__ import annotations

import numpy as np

from explain.detect import (
    Detections,
    Nuclei,
    detect_cells,
    find_nuclei,
    instance_detections,
    tile_map_detections,
)


def test_find_nuclei_finds_the_dark_blobs(blob_photo) -> None:
    photo = blob_photo(128, 128, blobs=((30, 40, 6), (95, 90, 8)))
    nuclei = find_nuclei(photo)
    for cx, cy, _ in ((30, 40, 6), (95, 90, 8)):
        dist = np.hypot(nuclei.centres[:, 0] - cx, nuclei.centres[:, 1] - cy)
        assert dist.min() < 3, (cx, cy, nuclei.centres)
    far = np.hypot(nuclei.centres[:, 0] - 64, nuclei.centres[:, 1] - 10)
    assert far.min() > 20  # nothing on empty glass
    assert nuclei.boxes.shape == (len(nuclei.radii), 4)


def _nuclei(points: list[tuple[float, float]], mass: list[float]) -> Nuclei:
    return Nuclei(np.array(points, dtype=float), np.full(len(points), 4.0), np.array(mass))


def test_peak_moves_to_the_nucleus_where_the_map_is_highest() -> None:
    heat = np.zeros((100, 100))
    heat[60:70, 20:30] = 5.0  # a pixel-level hot spot on nucleus B
    nuclei = _nuclei([(50, 50), (25, 65), (30, 70)], [1.0, 1.0, 9.0])
    dets = detect_cells(heat, nuclei, sigma=2, radius=15, max_detections=1)
    np.testing.assert_allclose(dets.points[0], (25, 65))
    np.testing.assert_allclose(dets.boxes[0], (21, 61, 29, 69))


def test_plateau_ties_go_to_the_most_prominent_nucleus_each_used_once() -> None:
    heat = np.full((96, 192), 0.0)
    heat[:, :96] = 1.0  # a hot tile, constant inside
    nuclei = _nuclei([(40, 40), (50, 50), (150, 50)], [1.0, 5.0, 9.0])
    dets = tile_map_detections(heat, nuclei, tile_size=96, max_detections=5)  # as explain, app
    assert len(dets.scores) >= 1
    np.testing.assert_allclose(dets.points[0], (50, 50))
    keys = {tuple(p) for p in dets.points.round(3)}
    assert len(keys) == len(dets.points)  # no nucleus twice
    assert np.all(np.diff(dets.scores) <= 1e-12)  # best first


def test_peak_without_nucleus_stays_a_point_and_glass_gives_nothing() -> None:
    heat = np.full((50, 50), np.nan)
    assert len(detect_cells(heat, _nuclei([(5, 5)], [1.0]), sigma=1, radius=5).scores) == 0
    heat[10:20, 10:20] = 0.0
    heat[14, 14] = 3.0
    dets = detect_cells(heat, _nuclei([(45, 45)], [1.0]), sigma=0, radius=6, max_detections=1)
    np.testing.assert_allclose(dets.points[0], (14, 14))
    assert dets.scores[0] == 3.0
    again = Detections.from_array(dets.to_array())
    np.testing.assert_allclose(again.boxes, dets.boxes)


def test_instances_are_their_own_detections_best_first() -> None:
    centres = np.array([[10.0, 10.0], [50.0, 20.0], [30.0, 40.0]])
    boxes = np.array([[0, 0, 32, 32], [34, 4, 66, 36], [14, 24, 46, 56]])
    dets = instance_detections(centres, boxes, np.array([0.2, 0.9, 0.5]), max_detections=2)
    np.testing.assert_allclose(dets.points, [[50, 20], [30, 40]])
    np.testing.assert_allclose(dets.boxes, boxes[[1, 2]])
    np.testing.assert_allclose(dets.scores, [0.9, 0.5])
