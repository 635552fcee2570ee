"""The reference study's Table 4 (whole-image CNNs at 512x512), for context rows only."""

from __future__ import annotations

REFERENCE_ROWS: dict[str, dict[str, float]] = {
    "DenseNet121 (reference study)": {
        "accuracy": 0.895,
        "sens normal": 0.926, "sens CIN1": 0.808, "sens CIN2+": 0.878,
        "spec normal": 0.925, "spec CIN1": 0.966, "spec CIN2+": 0.939,
        "macro_sensitivity": 0.870, "macro_specificity": 0.943,
    },
    "MobileNetV3-large (reference study)": {
        "accuracy": 0.901,
        "sens normal": 0.955, "sens CIN1": 0.740, "sens CIN2+": 0.873,
        "spec normal": 0.889, "spec CIN1": 0.985, "spec CIN2+": 0.943,
        "macro_sensitivity": 0.856, "macro_specificity": 0.939,
    },
    "Specialist technicians (morphology)": {"macro_sensitivity": 0.7, "macro_specificity": 0.9},
}  # fmt: skip
"""Values as published; macro means are the means of the three per-class figures."""
