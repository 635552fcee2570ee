"""Planning a synthetic data set: its patients (one slide, stain and grade each) and the
largest-remainder split of a count by fractions (also used by the mosaic builder)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mil_cyto.data.synthetic.config import SynthConfig
from mil_cyto.data.synthetic.stain import Stain, random_stain
from mil_cyto.labels import GRADES

_HPV_POSITIVE_RATE = (0.1, 0.6, 0.9)  # P(hpv positive) for normal, CIN1, CIN2+
_CYTOLOGY_AGREEMENT = 0.8


@dataclass(frozen=True)
class PatientPlan:
    """One synthetic patient (one slide): grade, label sources, stain and photo indices."""

    patient_id: str
    histology: str
    cytology: str
    hpv: str
    stain: Stain
    images: tuple[int, ...]


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder split of ``n`` by ``fractions`` (deterministic, ties by order)."""
    fr = np.asarray(fractions, dtype=np.float64)
    exact = n * fr / fr.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(fr)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


def plan_patients(config: SynthConfig) -> list[PatientPlan]:
    """Patients of the data set, from the patient stream of ``config.seed`` (no image drawn).

    Photo counts follow ``images_per_patient`` (the last patient keeps at least the low end
    where ``n_images`` allows); grades follow ``class_fractions`` by largest remainder, then
    are shuffled. Cytology agrees with histology 80% of the time, else an adjacent grade;
    HPV is positive with probability 0.1 / 0.6 / 0.9 by grade.
    """
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    lo, hi = config.images_per_patient
    counts: list[int] = []
    while sum(counts) < config.n_images:
        counts.append(int(rng.integers(lo, hi + 1)))
    counts[-1] -= sum(counts) - config.n_images
    i = len(counts) - 2
    while counts[-1] < lo and i >= 0:  # top up a short last patient from the ones before
        if counts[i] > lo:
            counts[i] -= 1
            counts[-1] += 1
        else:
            i -= 1
    n_patients = len(counts)
    grades = [
        g
        for g, k in zip(GRADES, allocate(n_patients, config.class_fractions), strict=True)
        for _ in range(k)
    ]
    grades = [grades[j] for j in rng.permutation(n_patients)]

    plans: list[PatientPlan] = []
    start = 0
    digits = max(4, len(str(n_patients)))
    for p, (grade, k) in enumerate(zip(grades, counts, strict=True)):
        stain = random_stain(rng)
        gi = GRADES.index(grade)
        if rng.random() < _CYTOLOGY_AGREEMENT:
            cyto = grade
        else:
            neighbours = [j for j in (gi - 1, gi + 1) if 0 <= j < len(GRADES)]
            cyto = GRADES[neighbours[int(rng.integers(0, len(neighbours)))]]
        hpv = "positive" if rng.random() < _HPV_POSITIVE_RATE[gi] else "negative"
        plans.append(
            PatientPlan(
                f"P{p + 1:0{digits}d}", grade, cyto, hpv, stain, tuple(range(start, start + k))
            )
        )
        start += k
    return plans
