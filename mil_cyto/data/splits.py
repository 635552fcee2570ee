"""Patient-disjoint, class-stratified train / val / test splits and k folds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from mil_cyto.errors import MilCytoError

T = TypeVar("T")


@dataclass(frozen=True)
class Split:
    """Row indices of one fold's parts; no patient appears in two of them."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, list[int]]:
        return {name: getattr(self, name).tolist() for name in ("train", "val", "test")}

    def take(self, items: Sequence[T]) -> tuple[list[T], list[T], list[T]]:
        """``items`` (one per manifest row) cut into the train, val and test parts."""
        return (
            [items[i] for i in self.train],
            [items[i] for i in self.val],
            [items[i] for i in self.test],
        )


def _stratified_group_parts(
    labels: np.ndarray, groups: np.ndarray, n_parts: int, seed: int
) -> list[np.ndarray]:
    """Cut rows into ``n_parts`` patient-disjoint parts stratified by the patient's grade."""
    n_groups = len(np.unique(groups))
    if n_groups < n_parts:
        raise MilCytoError(
            f"only {n_groups} patients for {n_parts} patient-disjoint parts; add patients "
            "or use fewer folds"
        )
    splitter = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
    try:
        return [test for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]
    except ValueError as err:
        raise MilCytoError(
            f"cannot cut {n_groups} patients into {n_parts} patient-disjoint parts ({err}); "
            "add patients or use fewer folds"
        ) from None


def patient_folds(
    labels: Sequence[int],
    patient_ids: Sequence[str],
    *,
    k: int = 5,
    val_parts: int = 4,
    seed: int = 0,
) -> list[Split]:
    """``k`` folds: each test part is one patient group fold; val is carved from the rest.

    Stratification uses each patient's highest grade, so all of a patient's photos move
    together. With ``k=5, val_parts=4`` a fold is 60 / 20 / 20 percent of patients.
    """
    labels_arr = np.asarray(labels)
    groups = np.asarray(patient_ids)
    patient_grade = {p: labels_arr[groups == p].max() for p in np.unique(groups)}
    strata = np.array([patient_grade[p] for p in groups])
    folds = []
    for i, test in enumerate(_stratified_group_parts(strata, groups, k, seed)):
        rest = np.setdiff1d(np.arange(len(groups)), test)
        val_rel = _stratified_group_parts(strata[rest], groups[rest], val_parts, seed + i + 1)[0]
        val = rest[val_rel]
        train = np.setdiff1d(rest, val)
        folds.append(Split(train=np.sort(train), val=np.sort(val), test=np.sort(test)))
    return folds


def train_val_test_split(
    labels: Sequence[int], patient_ids: Sequence[str], *, seed: int = 0
) -> Split:
    """The default 60 / 20 / 20 patient-disjoint split (fold 0 of :func:`patient_folds`)."""
    return patient_folds(labels, patient_ids, k=5, val_parts=4, seed=seed)[0]


def fixed_split(splits: Sequence[str | None], *, where: str = "manifest") -> Split | None:
    """The split a manifest's ``split`` column fixes (``train``/``val``/``test`` per row), or
    None when no row carries one (then the patient split applies).

    Raises:
        MilCytoError: only some rows carry a split, or a part is empty.
    """
    if all(s is None for s in splits):
        return None
    missing = [i for i, s in enumerate(splits) if s is None]
    if missing:
        raise MilCytoError(
            f"{where}: the 'split' column is empty on {len(missing)} row(s) (first: row "
            f"{missing[0] + 1}); give every row train, val or test, or drop the column"
        )
    arr = np.asarray(splits)
    parts = {name: np.flatnonzero(arr == name) for name in ("train", "val", "test")}
    empty = [name for name, idx in parts.items() if idx.size == 0]
    if empty:
        raise MilCytoError(f"{where}: the 'split' column has no {' / '.join(empty)} row")
    return Split(train=parts["train"], val=parts["val"], test=parts["test"])
