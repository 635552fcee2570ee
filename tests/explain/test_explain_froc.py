"""explain.froc: CAMELYON16-style sensitivity at false positives per photo."""

from __future__ import annotations

import numpy as np

from explain.detect import Detections
from explain.froc import FP_RATES, froc_curve, froc_sensitivity


def _dets(points: list[tuple[float, float]], scores: list[float]) -> Detections:
    p = np.array(points, dtype=float).reshape(-1, 2)
    return Detections(p, np.concatenate([p - 1, p + 1], 1), np.array(scores, dtype=float))


def test_froc_counts_hits_duplicates_and_false_positives() -> None:
    truth = {"a": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "b": np.array([[0, 0, 5, 5]])}
    detections = {
        "a": _dets([(5, 5), (6, 6), (50, 50), (25, 25)], [0.9, 0.8, 0.7, 0.1]),
        "b": _dets([(40, 40), (2, 2)], [0.6, 0.05]),
        "n": _dets([(1, 1)], [0.95]),  # a normal photo: every detection is false
    }
    images = ["a", "b", "n"]
    fps, sens, n_cells = froc_curve(detections, truth, images)
    assert n_cells == 3
    # thresholds: .95 FP, .9 hit a0, .8 duplicate of a0, .7 FP, .6 FP, .1 hit a1, .05 hit b0
    np.testing.assert_allclose(fps * 3, [0, 1, 1, 1, 2, 3, 3, 3])
    np.testing.assert_allclose(sens * 3, [0, 0, 1, 1, 1, 1, 2, 3])
    out = froc_sensitivity(detections, truth, images, fp_rates=(0.25, 0.5, 1.0, 2.0))
    assert out == {"0.25": 0.0, "0.5": 1 / 3, "1": 1.0, "2": 1.0}
    assert list(froc_sensitivity(detections, truth, images)) == [f"{r:g}" for r in FP_RATES]


def test_froc_without_annotated_cells_is_none() -> None:
    out = froc_sensitivity({"a": _dets([(1, 1)], [1.0])}, {}, ["a"])
    assert set(out.values()) == {None}
