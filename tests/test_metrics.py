"""The reference study's metrics: accuracy, one-vs-rest sensitivity/specificity, macro means."""

from __future__ import annotations

import json

import pytest

from mil_cyto.labels import GRADES
from mil_cyto.metrics import classification_metrics, format_table

# truth rows x prediction columns:
#            normal CIN1 CIN2+
# normal        2     1    1
# CIN1          1     2    0
# CIN2+         0     1    2
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_hand_computed_example() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["n_test"] == 10
    assert m["accuracy"] == pytest.approx(0.6)
    # normal: TP 2, FN 2, FP 1, TN 5
    # CIN1:   TP 2, FN 1, FP 2, TN 5
    # CIN2+:  TP 2, FN 1, FP 1, TN 6
    expected = {
        "normal": (2 / 4, 5 / 6, 4),
        "CIN1": (2 / 3, 5 / 7, 3),
        "CIN2+": (2 / 3, 6 / 7, 3),
    }
    assert list(m["per_class"]) == list(GRADES)
    for name, (sens, spec, support) in expected.items():
        row = m["per_class"][name]
        assert row["sensitivity"] == pytest.approx(sens)
        assert row["specificity"] == pytest.approx(spec)
        assert row["support"] == support
    assert m["macro_sensitivity"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert m["macro_specificity"] == pytest.approx((5 / 6 + 5 / 7 + 6 / 7) / 3)


def test_perfect_predictions() -> None:
    m = classification_metrics([0, 1, 2, 2], [0, 1, 2, 2])
    assert m["accuracy"] == 1.0
    assert m["macro_sensitivity"] == 1.0 and m["macro_specificity"] == 1.0


def test_absent_class_has_no_sensitivity_and_is_left_out_of_the_macro_mean() -> None:
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1])
    cin2 = m["per_class"]["CIN2+"]
    assert cin2["sensitivity"] is None
    assert cin2["support"] == 0
    assert cin2["specificity"] == pytest.approx(3 / 4)  # one false CIN2+ among 4 negatives
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(0.5)
    assert m["per_class"]["CIN1"]["sensitivity"] == pytest.approx(1.0)
    assert m["macro_sensitivity"] == pytest.approx(0.75)  # not (0.5 + 1 + 0) / 3
    assert m["macro_specificity"] == pytest.approx((1.0 + 1.0 + 0.75) / 3)


def test_metrics_are_strict_json() -> None:
    m = classification_metrics([0, 0, 1], [0, 1, 1])
    text = json.dumps(m, allow_nan=False)  # None, never NaN
    assert json.loads(text)["per_class"]["CIN2+"]["sensitivity"] is None


def test_custom_classes() -> None:
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], classes=("neg", "pos"))
    assert set(m["per_class"]) == {"neg", "pos"}
    assert m["per_class"]["pos"]["sensitivity"] == pytest.approx(0.5)
    assert m["per_class"]["pos"]["specificity"] == pytest.approx(1.0)


def test_format_table() -> None:
    table = format_table(classification_metrics(Y_TRUE, Y_PRED)).splitlines()
    assert len(table) == 3
    head = [c.strip() for c in table[0].strip("|").split("|")]
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert head[0] == "acc" and len(head) == len(cells) == 9
    assert cells[0] == "0.600"
    assert cells[head.index("sens normal")] == "0.500"
    assert cells[head.index("spec CIN2+")] == "0.857"


def test_format_table_shows_missing_as_dash() -> None:
    table = format_table(classification_metrics([0, 0, 1, 1], [0, 2, 1, 1]))
    head = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert cells[head.index("sens CIN2+")] == "-"
