"""How far reviewers agree with each other and with the model: Cohen's kappa on the boxes
both sides judged.

Between two reviewers the items are the boxes (image and ``x0, y0, x1, y1``) both marked;
their verdicts (atypical / normal / unsure) are compared. Against the model, each of a
reviewer's atypical or normal marks is compared with the model's call on that box:
atypical when the box's centre lies in one of the photo's top-k attention tiles, normal
otherwise (unsure marks are left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
from sklearn.metrics import cohen_kappa_score

from mil_cyto.review.marks import Mark, reviewers

MIN_ITEMS = 2
"""Fewest shared boxes for which a kappa is reported."""


def kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two label lists; NaN when undefined (under MIN_ITEMS items, or both
    sides giving one and the same label throughout)."""
    if len(a) < MIN_ITEMS or (len(set(a)) == 1 and set(a) == set(b)):
        return math.nan
    return float(cohen_kappa_score(list(a), list(b)))


def _by_box(marks: Sequence[Mark], reviewer: str) -> dict[tuple, str]:
    return {m.key[1:]: m.mark for m in marks if m.reviewer == reviewer}


def model_call(box: tuple[int, int, int, int], top_tiles: np.ndarray) -> str:
    """``atypical`` when the centre of ``box`` lies in one of ``top_tiles`` ``(K, 4)``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    tiles = np.asarray(top_tiles, dtype=np.float64).reshape(-1, 4)
    inside = (tiles[:, 0] <= cx) & (cx < tiles[:, 2]) & (tiles[:, 1] <= cy) & (cy < tiles[:, 3])
    return "atypical" if bool(inside.any()) else "normal"


def agreement_table(
    marks: Sequence[Mark], top_tiles: Mapping[str, np.ndarray], *, k: int
) -> list[dict[str, object]]:
    """One row per pair of reviewers and per reviewer against the model.

    ``top_tiles``: each photo's top-``k`` attention tiles ``(k, 4)``; photos absent from it
    are left out of the model rows. Row keys: ``between``, ``shared boxes``, ``agree``
    (fraction of shared boxes with the same verdict) and ``kappa`` (NaN when undefined).
    """
    rows: list[dict[str, object]] = []
    names = reviewers(marks)
    boxes = {name: _by_box(marks, name) for name in names}
    for a, b in combinations(names, 2):
        shared = sorted(set(boxes[a]) & set(boxes[b]))
        la, lb = [boxes[a][s] for s in shared], [boxes[b][s] for s in shared]
        rows.append(_row(f"{a or '(no name)'} / {b or '(no name)'}", la, lb))
    for name in names:
        items = [
            (verdict, model_call(key[1:], top_tiles[key[0]]))
            for key, verdict in sorted(boxes[name].items())
            if verdict != "unsure" and key[0] in top_tiles
        ]
        rows.append(
            _row(
                f"{name or '(no name)'} / model (top-{k} tiles)",
                [v for v, _ in items],
                [c for _, c in items],
            )
        )
    return rows


def _row(between: str, a: Sequence[str], b: Sequence[str]) -> dict[str, object]:
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else math.nan
    return {"between": between, "shared boxes": len(a), "agree": agree, "kappa": kappa(a, b)}
