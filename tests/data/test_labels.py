"""Grade and HPV parsing: every spelling the labs use maps to one of the three grades."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mil_cyto.labels import GRADES, grade_index, parse_grade, parse_hpv


@pytest.mark.parametrize(
    "text",
    ["CIN2", "CIN3", "CIS", "HSIL", "cin 2/3", "CIN2/3", "cin2+", " Cin  3 ", "CIN_2", "hsil"],
)
def test_high_grades_map_to_cin2_plus(text: str) -> None:
    assert parse_grade(text) == "CIN2+"


@pytest.mark.parametrize("text", ["LSIL", "CIN1", "cin 1", "CIN-1", "lsil ", "CIN I"])
def test_low_grades_map_to_cin1(text: str) -> None:
    assert parse_grade(text) == "CIN1"


@pytest.mark.parametrize("text", ["NILM", "normal", "Negative", "nilm"])
def test_normal_spellings(text: str) -> None:
    assert parse_grade(text) == "normal"


@pytest.mark.parametrize("text", ["", "   ", None, "nan", "NA", "n/a"])
def test_empty_histology_counts_as_normal(text: str | None) -> None:
    assert parse_grade(text) == "normal"


@pytest.mark.parametrize("text", ["", None])
def test_empty_label_can_be_refused(text: str | None) -> None:
    with pytest.raises(ValueError):
        parse_grade(text, missing_is_normal=False)


@pytest.mark.parametrize("text", ["CIN4", "ASC-US-ish", "cancer?", "CIN 12", "high", "xyz"])
def test_unknown_grade_raises_and_names_value(text: str) -> None:
    with pytest.raises(ValueError, match="unknown grade") as info:
        parse_grade(text)
    assert repr(text) in str(info.value)


def test_canonical_names_round_trip() -> None:
    for grade in GRADES:
        assert parse_grade(grade) == grade
    assert [grade_index(g) for g in GRADES] == [0, 1, 2]


def test_grade_index_rejects_non_canonical() -> None:
    with pytest.raises(ValueError):
        grade_index("CIN2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("positive", "positive"),
        ("POS", "positive"),
        ("+", "positive"),
        ("HPV+", "positive"),
        ("negative", "negative"),
        ("Neg", "negative"),
        ("-", "negative"),
        ("hr-HPV-", "negative"),
        ("", None),
        (None, None),
        ("unknown", None),
    ],
)
def test_parse_hpv(text: str | None, expected: str | None) -> None:
    assert parse_hpv(text) == expected


@pytest.mark.parametrize("text", ["maybe", "CIN2", "2"])
def test_parse_hpv_unknown_raises(text: str) -> None:
    with pytest.raises(ValueError, match="unknown HPV"):
        parse_hpv(text)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_any_text_gives_a_grade_or_value_error(text: str) -> None:
    try:
        grade = parse_grade(text)
    except ValueError:
        return
    assert grade in GRADES


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(["CIN2", "cin3", "HSIL", "LSIL", "CIN1", "NILM"]), st.text(" \t\n"))
def test_whitespace_padding_does_not_change_the_grade(core: str, pad: str) -> None:
    assert parse_grade(pad + core + pad) == parse_grade(core)
