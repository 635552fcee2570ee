"""Patient-disjoint splits: no patient leaks between train / val / test, in every fold."""

from __future__ import annotations

import numpy as np
import pytest

from mil_cyto.data.splits import patient_folds, train_val_test_split
from mil_cyto.errors import MilCytoError


def _cohort(n_patients: int = 45, seed: int = 0) -> tuple[list[int], list[str]]:
    """Patients with 1-4 photos each; a patient's photos are at most its grade."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        grade = p % 3
        for _ in range(int(rng.integers(1, 5))):
            labels.append(int(rng.integers(0, grade + 1)))
            patients.append(f"P{p:03d}")
    order = rng.permutation(len(labels))  # rows of a patient need not be adjacent
    return [labels[i] for i in order], [patients[i] for i in order]


def _check_split(split, labels: list[int], patients: list[str]) -> None:
    parts = {name: np.asarray(getattr(split, name)) for name in ("train", "val", "test")}
    ids = np.asarray(patients)
    # every row exactly once
    everything = np.concatenate(list(parts.values()))
    assert sorted(everything.tolist()) == list(range(len(labels)))
    # patient-disjoint
    groups = {name: set(ids[idx].tolist()) for name, idx in parts.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    # every class present in every part (enough patients of each grade)
    lab = np.asarray(labels)
    for name, idx in parts.items():
        assert set(lab[idx].tolist()) == {0, 1, 2}, name


def test_train_val_test_split_is_patient_disjoint() -> None:
    labels, patients = _cohort()
    split = train_val_test_split(labels, patients, seed=3)
    _check_split(split, labels, patients)
    n = len(labels)
    # roughly 60 / 20 / 20 of the rows
    assert 0.4 * n < len(split.train) < 0.8 * n
    assert 0.05 * n < len(split.val) < 0.35 * n
    assert 0.05 * n < len(split.test) < 0.35 * n


@pytest.mark.parametrize(("k", "val_parts"), [(5, 4), (3, 2), (4, 3)])
def test_every_fold_is_patient_disjoint(k: int, val_parts: int) -> None:
    labels, patients = _cohort()
    folds = patient_folds(labels, patients, k=k, val_parts=val_parts, seed=1)
    assert len(folds) == k
    for split in folds:
        _check_split(split, labels, patients)
    # the test parts of the k folds partition the rows
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(len(labels)))


def test_split_indices_are_sorted_ints() -> None:
    labels, patients = _cohort()
    split = train_val_test_split(labels, patients)
    for part in (split.train, split.val, split.test):
        assert np.issubdtype(part.dtype, np.integer)
        assert np.all(np.diff(part) > 0)
    as_dict = split.as_dict()
    assert set(as_dict) == {"train", "val", "test"}
    assert all(isinstance(i, int) for i in as_dict["train"])


def test_deterministic_for_a_seed() -> None:
    labels, patients = _cohort()
    a = patient_folds(labels, patients, seed=7)
    b = patient_folds(labels, patients, seed=7)
    for fa, fb in zip(a, b, strict=True):
        assert fa.as_dict() == fb.as_dict()
    c = patient_folds(labels, patients, seed=8)
    assert any(fa.as_dict() != fc.as_dict() for fa, fc in zip(a, c, strict=True))


def test_all_photos_of_a_patient_move_together_with_mixed_grades() -> None:
    # one patient has photos of all three grades; stratifying by row would split them
    labels = [0, 1, 2] + [i % 3 for i in range(30)]
    patients = ["mixed"] * 3 + [f"p{i}" for i in range(30)]
    for split in patient_folds(labels, patients, k=5, seed=0):
        parts = [set(np.asarray(patients)[getattr(split, n)].tolist()) for n in ("train", "val")]
        holder = [n for n, s in zip(("train", "val"), parts, strict=True) if "mixed" in s]
        in_test = "mixed" in set(np.asarray(patients)[split.test].tolist())
        assert len(holder) + int(in_test) == 1


@pytest.mark.parametrize("n_patients", [1, 3, 4])
def test_too_few_patients(n_patients: int) -> None:
    labels = [i % 3 for i in range(n_patients * 2)]
    patients = [f"p{i // 2}" for i in range(n_patients * 2)]
    with pytest.raises(MilCytoError, match="patients"):
        train_val_test_split(labels, patients)


@pytest.mark.parametrize("n_patients", [5, 9])
def test_too_few_members_per_class_is_a_milcyto_error(n_patients: int) -> None:
    labels = [i % 3 for i in range(n_patients)]
    patients = [f"p{i}" for i in range(n_patients)]
    with pytest.raises(MilCytoError):
        train_val_test_split(labels, patients)
