"""The three ordered grades and parsing of histology, cytology and HPV strings."""

from __future__ import annotations

import re

GRADES: tuple[str, ...] = ("normal", "CIN1", "CIN2+")
"""Class names in ordinal order: index 0 < 1 < 2."""

_GRADE_ALIASES: dict[str, str] = {}
for _alias in (
    "normal",
    "negative",
    "nilm",
    "benign",
    "none",
    "no histology",
    "no lesion",
    "cervicitis",
    "inflammation",
    "reactive",
    "metaplasia",
    "cin0",
    "0",
):
    _GRADE_ALIASES[_alias] = "normal"
for _alias in (
    "cin1",
    "cin 1",
    "cin-1",
    "cini",
    "cin i",
    "lsil",
    "mild dysplasia",
    "koilocytosis",
    "hpv effect",
    "condyloma",
    "1",
):
    _GRADE_ALIASES[_alias] = "CIN1"
for _alias in (
    "cin2+",
    "cin2",
    "cin 2",
    "cin-2",
    "cinii",
    "cin ii",
    "cin3",
    "cin 3",
    "cin-3",
    "ciniii",
    "cin iii",
    "cin2/3",
    "cin 2/3",
    "cin2-3",
    "cis",
    "carcinoma in situ",
    "hsil",
    "ais",
    "adenocarcinoma in situ",
    "moderate dysplasia",
    "severe dysplasia",
    "scc",
    "squamous cell carcinoma",
    "invasive carcinoma",
    "carcinoma",
    "asc-h",
    "2",
    "2+",
):
    _GRADE_ALIASES[_alias] = "CIN2+"
del _alias

_HPV_ALIASES: dict[str, str] = {
    **dict.fromkeys(("positive", "pos", "+", "1", "true", "yes", "hpv+", "hr-hpv+"), "positive"),
    **dict.fromkeys(("negative", "neg", "-", "0", "false", "no", "hpv-", "hr-hpv-"), "negative"),
}


def _normalise(value: str) -> str:
    return re.sub(r"\s+", " ", str(value).strip().lower().replace("_", " "))


def parse_grade(value: str | None, *, missing_is_normal: bool = True) -> str:
    """Map a histology or cytology string to one of ``GRADES``.

    CIN2, CIN3, CIS, HSIL and carcinoma grades map to ``CIN2+``; LSIL and CIN1 to ``CIN1``.
    An empty value means "no histology", which the reference study counts as ``normal``.

    Raises:
        ValueError: for any string that is not a known grade (the caller adds file and line).
    """
    if value is None or _normalise(value) in ("", "nan", "na", "n/a"):
        if missing_is_normal:
            return "normal"
        raise ValueError("empty label")
    key = _normalise(value)
    if key in _GRADE_ALIASES:
        return _GRADE_ALIASES[key]
    raise ValueError(
        f"unknown grade {value!r}; expected one of {', '.join(GRADES)} "
        "(or CIN2, CIN3, CIS, HSIL, LSIL, NILM ...)"
    )


def parse_hpv(value: str | None) -> str | None:
    """Map an HPV test result to ``"positive"``/``"negative"``; empty means unknown (None)."""
    if value is None or _normalise(value) in ("", "nan", "na", "n/a", "unknown"):
        return None
    key = _normalise(value)
    if key in _HPV_ALIASES:
        return _HPV_ALIASES[key]
    raise ValueError(f"unknown HPV result {value!r}; expected positive or negative")


def grade_index(grade: str) -> int:
    """Ordinal index of a canonical grade name (``normal`` -> 0, ``CIN2+`` -> 2)."""
    return GRADES.index(grade)
