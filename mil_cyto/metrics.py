"""The reference study's metrics: accuracy, one-vs-rest sensitivity and specificity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix

from mil_cyto.labels import GRADES


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str] = GRADES,
) -> dict[str, Any]:
    """Accuracy, per-class one-vs-rest sensitivity and specificity, and their macro means.

    ``y_true`` and ``y_pred`` are 1-D class indices (n,) into ``classes``.

    Returns the DESIGN.md layout: ``accuracy``, ``macro_sensitivity``, ``macro_specificity``,
    ``per_class`` {class: {sensitivity, specificity, support}}, ``confusion_matrix``
    (rows = truth, columns = prediction) and ``n_test``. A class absent from ``y_true`` has
    an undefined sensitivity (NaN, written as null) and is left out of the macro mean.
    """
    labels = list(range(len(classes)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    total = cm.sum()
    per_class: dict[str, dict[str, float | int | None]] = {}
    sens, spec = [], []
    for i, name in enumerate(classes):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        s = tp / (tp + fn) if tp + fn else float("nan")
        p = tn / (tn + fp) if tn + fp else float("nan")
        per_class[name] = {
            "sensitivity": _clean(s),
            "specificity": _clean(p),
            "support": int(tp + fn),
        }
        sens.append(s)
        spec.append(p)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_sensitivity": _clean(float(np.nanmean(sens))),
        "macro_specificity": _clean(float(np.nanmean(spec))),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "n_test": int(total),
    }


def _clean(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def format_table(metrics: dict[str, Any], classes: Sequence[str] = GRADES) -> str:
    """The reference study's Table 4 row layout as a Markdown table (one row: this run)."""
    head = ["acc"] + [f"sens {c}" for c in classes] + [f"spec {c}" for c in classes]
    head += ["mean sens", "mean spec"]
    values = [metrics["accuracy"]]
    values += [metrics["per_class"][c]["sensitivity"] for c in classes]
    values += [metrics["per_class"][c]["specificity"] for c in classes]
    values += [metrics["macro_sensitivity"], metrics["macro_specificity"]]
    cells = ["-" if v is None else f"{v:.3f}" for v in values]
    return "\n".join(
        [
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
            "| " + " | ".join(cells) + " |",
        ]
    )
