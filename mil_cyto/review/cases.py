"""The case list: every test photo with truth, prediction and probabilities, sorted and
filtered for review."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES

SORTS: dict[str, str] = {
    "suspicion": "most suspicious first: P(CIN1) + P(CIN2+), i.e. 1 - P(normal)",
    "error": "worst errors first: 1 - P(true grade), so confident mistakes lead",
    "grade gap": "largest |predicted - true| grade steps first, then error",
    "image": "by image name",
}
OUTCOMES = ("all", "right", "wrong")


def annotate(row: dict[str, Any]) -> dict[str, Any]:
    """A prediction row plus ``suspicion`` (1 - P(normal)), ``error`` (1 - P(truth)),
    ``gap`` (predicted minus true grade index) and ``correct``."""
    truth, pred = GRADES.index(row["label"]), GRADES.index(row["pred"])
    return {
        **row,
        "suspicion": 1.0 - float(row["p_normal"]),
        "error": 1.0 - float(row[f"p_{row['label']}"]),
        "gap": pred - truth,
        "correct": truth == pred,
    }


def case_list(
    rows: Iterable[dict[str, Any]],
    *,
    sort: str = "suspicion",
    truth: Sequence[str] | None = None,
    predicted: Sequence[str] | None = None,
    outcome: str = "all",
) -> list[dict[str, Any]]:
    """Annotated rows filtered by true grade, predicted grade and outcome, then sorted.

    ``truth`` / ``predicted``: grades to keep (None keeps all); ``outcome``: all, right or
    wrong. Ties break on image name, so the order is stable.
    """
    if sort not in SORTS:
        raise MilCytoError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    if outcome not in OUTCOMES:
        raise MilCytoError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
    cases = [annotate(r) for r in rows]
    if truth is not None:
        cases = [c for c in cases if c["label"] in truth]
    if predicted is not None:
        cases = [c for c in cases if c["pred"] in predicted]
    if outcome != "all":
        cases = [c for c in cases if c["correct"] == (outcome == "right")]
    keys = {
        "suspicion": lambda c: (-c["suspicion"], c["image"]),
        "error": lambda c: (-c["error"], c["image"]),
        "grade gap": lambda c: (-abs(c["gap"]), -c["error"], c["image"]),
        "image": lambda c: (c["image"],),
    }
    return sorted(cases, key=keys[sort])
