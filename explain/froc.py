"""FROC: sensitivity for annotated atypical cells at given false positives per photo.

CAMELYON16 convention: a detection hits an annotated cell when its point lies inside the
cell's box; a second hit on an already found cell counts neither way; any other detection
is a false positive. Detections of all photos are pooled by score, so scores must be
comparable across photos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from explain.detect import Detections

FP_RATES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(K, M)`` bool: point k (x, y) lies in box m (x0, y0, x1, y1), edges included."""
    p, b = points[:, None, :], boxes[None, :, :]
    return (
        (p[..., 0] >= b[..., 0])
        & (p[..., 0] <= b[..., 2])
        & (p[..., 1] >= b[..., 1])
        & (p[..., 1] <= b[..., 3])
    )


def froc_curve(
    detections: Mapping[str, Detections],
    truth: Mapping[str, np.ndarray],
    images: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Average false positives per photo and sensitivity at every score threshold.

    ``images``: the photos evaluated (normal ones too: their detections are all false
    positives); ``truth``: atypical boxes ``(M, 4)`` per photo. Returns ``(fp_per_image,
    sensitivity, n_cells)``, thresholds from the highest score down.
    """
    scores, hits = [], []
    offset = 0
    for image in images:
        boxes = np.asarray(truth.get(image, np.zeros((0, 4)))).reshape(-1, 4)
        det = detections.get(image, Detections.empty())
        inside = points_in_boxes(det.points, boxes)
        for k in range(len(det.scores)):
            scores.append(float(det.scores[k]))
            hits.append(offset + np.flatnonzero(inside[k]))
        offset += len(boxes)
    n_cells = offset
    order = np.argsort(-np.asarray(scores), kind="stable")
    found = np.zeros(n_cells, dtype=bool)
    fps, sens = [0.0], [0.0]
    false_pos = 0
    sorted_scores = np.asarray(scores)[order]
    for i, k in enumerate(order):
        if len(hits[k]):
            found[hits[k]] = True
        else:
            false_pos += 1
        last_of_tie = i + 1 == len(order) or sorted_scores[i + 1] != sorted_scores[i]
        if last_of_tie:
            fps.append(false_pos / max(len(images), 1))
            sens.append(found.sum() / n_cells if n_cells else 0.0)
    return np.asarray(fps), np.asarray(sens), n_cells


def froc_sensitivity(
    detections: Mapping[str, Detections],
    truth: Mapping[str, np.ndarray],
    images: Sequence[str],
    fp_rates: Sequence[float] = FP_RATES,
) -> dict[str, float | None]:
    """``{fp rate: sensitivity}`` (keys as strings, e.g. "0.25"): the best sensitivity
    reached with at most that many false positives per photo; None without annotations."""
    fps, sens, n_cells = froc_curve(detections, truth, images)
    out: dict[str, float | None] = {}
    for rate in fp_rates:
        ok = fps <= rate + 1e-12
        out[f"{rate:g}"] = float(sens[ok].max()) if n_cells else None
    return out
