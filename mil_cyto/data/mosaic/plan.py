"""Planning a mosaic data set: each crop's split, the virtual patients and their fields, and
the field size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mil_cyto.data.mosaic.config import SPLITS, MosaicConfig
from mil_cyto.data.mosaic.crops import CellCrop
from mil_cyto.data.synthetic.plan import allocate
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES


def assign_splits(
    crops: Sequence[CellCrop], fractions: Sequence[float], rng: np.random.Generator
) -> list[str]:
    """One split per crop, stratified by class folder (largest remainder per folder).

    Raises:
        MilCytoError: a grade in use cannot give every split at least one cell.
    """
    out = [""] * len(crops)
    by_folder: dict[str, list[int]] = {}
    for i, c in enumerate(crops):
        by_folder.setdefault(c.folder, []).append(i)
    for folder in sorted(by_folder):
        idx = by_folder[folder]
        order = [idx[j] for j in rng.permutation(len(idx))]
        counts = allocate(len(idx), fractions)
        start = 0
        for name, k in zip(SPLITS, counts, strict=True):
            for i in order[start : start + k]:
                out[i] = name
            start += k
    for grade in GRADES:
        have = {out[i] for i, c in enumerate(crops) if c.grade == grade}
        if have and have != set(SPLITS):
            n = sum(c.grade == grade for c in crops)
            raise MilCytoError(
                f"only {n} {grade} crop(s): too few to give train, val and test their own "
                f"cells; add crops or map that folder to 'drop'"
            )
    return out


@dataclass(frozen=True)
class FieldPlan:
    """One field photo: index, patient, split, grade and the slide's stain seed."""

    index: int
    patient_id: str
    split: str
    grade: str


def plan_fields(
    config: MosaicConfig, grades: Sequence[str], rng: np.random.Generator
) -> list[FieldPlan]:
    """Fields per split by ``split_fractions``; per split, virtual patients of one grade each,
    grades balanced across patients (largest remainder), fields numbered in plan order."""
    lo, hi = config.images_per_patient
    plans: list[FieldPlan] = []
    n_patients = 0
    for split, n_split in zip(
        SPLITS, allocate(config.n_images, config.split_fractions), strict=True
    ):
        counts: list[int] = []
        while sum(counts) < n_split:
            counts.append(int(rng.integers(lo, hi + 1)))
        if counts:
            counts[-1] -= sum(counts) - n_split
        # balance fields (not patients) across grades: each patient, in random order, takes
        # the grade with the fewest fields so far (ties broken at random)
        fields_of = dict.fromkeys(grades, 0)
        patient_grades: list[str] = []
        for k in counts:
            fewest = min(fields_of.values())
            tied = [g for g in grades if fields_of[g] == fewest]
            grade = tied[int(rng.integers(0, len(tied)))]
            fields_of[grade] += k
            patient_grades.append(grade)
        for grade, k in zip(patient_grades, counts, strict=True):
            n_patients += 1
            pid = f"M{n_patients:04d}"
            plans += [FieldPlan(len(plans) + j, pid, split, grade) for j in range(k)]
    return plans


def field_size(config: MosaicConfig, sides: Sequence[int]) -> tuple[int, int]:
    """Field (width, height): the config's, or 10 x 7.5 median crop sides (at least 64 px)."""
    if config.width and config.height:
        return int(config.width), int(config.height)
    side = float(np.median(sides)) * float(np.mean(config.scale))
    w = config.width or max(64, int(round(10 * side / 8)) * 8)
    h = config.height or max(64, int(round(7.5 * side / 8)) * 8)
    return int(w), int(h)
