"""The mosaic data set's settings (:class:`MosaicConfig`, :class:`MaskSpec`) and file names."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mil_cyto.errors import MilCytoError

DROP = "drop"
"""Mapping value that leaves a class folder out."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
MOSAIC_MANIFEST_COLUMNS: tuple[str, ...] = (
    "image",
    "patient_id",
    "histology",
    "cytology",
    "hpv",
    "split",
)
CONFIG_FILE = "mosaic_config.json"
CELL_SPLITS_FILE = "cell_splits.csv"
PLACEMENTS_FILE = "placements.csv"


def _int_range(name: str, rng: Sequence[Any], low: int) -> tuple[int, int]:
    if len(rng) != 2 or not all(isinstance(v, (int, np.integer)) for v in rng):
        raise MilCytoError(f"invalid mosaic config: {name} must be two integers, got {rng!r}")
    a, b = int(rng[0]), int(rng[1])
    if not low <= a <= b:
        raise MilCytoError(
            f"invalid mosaic config: {name} must satisfy {low} <= low <= high, got {rng!r}"
        )
    return a, b


@dataclass(frozen=True)
class MosaicConfig:
    """Everything that shapes a mosaic data set; same config and crops => identical bytes.

    Attributes:
        n_images: number of field photos.
        seed: master seed (split assignment, patients, every field).
        cells_per_field: inclusive range of cells in a field (atypical ones included).
        atypical_per_field: inclusive range of cells of the field's grade in an abnormal field.
        cin1_in_cin2_field: inclusive range of extra CIN1 cells in a CIN2+ field.
        images_per_patient: inclusive range of fields per virtual patient.
        split_fractions: shares of crops (per class folder) and of fields for train/val/test.
        scale: range of the per-cell rescale factor; within [0.5, 2] (native size: 1, 1).
        width, height: field size in px; 0 = automatic, 10 x 7.5 median crop sides (so the
            cell count gives a similar density whatever the crop size).
    """

    n_images: int = 300
    seed: int = 0
    cells_per_field: tuple[int, int] = (20, 40)
    atypical_per_field: tuple[int, int] = (1, 5)
    cin1_in_cin2_field: tuple[int, int] = (0, 2)
    images_per_patient: tuple[int, int] = (3, 5)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    scale: tuple[float, float] = (1.0, 1.0)
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        for name in (
            "cells_per_field",
            "atypical_per_field",
            "cin1_in_cin2_field",
            "images_per_patient",
            "split_fractions",
            "scale",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.n_images, (int, np.integer)) or self.n_images < 1:
            raise MilCytoError(f"--n-images must be a positive integer, got {self.n_images!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise MilCytoError(f"--seed must be a non-negative integer, got {self.seed!r}")
        cells = _int_range("cells_per_field", self.cells_per_field, 1)
        atyp = _int_range("atypical_per_field", self.atypical_per_field, 1)
        extra = _int_range("cin1_in_cin2_field", self.cin1_in_cin2_field, 0)
        _int_range("images_per_patient", self.images_per_patient, 1)
        if atyp[1] + extra[1] > cells[0]:
            raise MilCytoError(
                "invalid mosaic config: atypical_per_field high + cin1_in_cin2_field high "
                f"({atyp[1]} + {extra[1]}) exceeds cells_per_field low ({cells[0]})"
            )
        fr = self.split_fractions
        if len(fr) != 3 or any(not math.isfinite(f) or f <= 0 for f in fr):
            raise MilCytoError(
                f"invalid mosaic config: split_fractions must be 3 positive numbers, got {fr!r}"
            )
        lo, hi = self.scale if len(self.scale) == 2 else (0.0, 0.0)
        if not 0.5 <= lo <= hi <= 2.0:
            raise MilCytoError(
                f"invalid mosaic config: scale must satisfy 0.5 <= low <= high <= 2, "
                f"got {self.scale!r}"
            )
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or (v != 0 and not 64 <= v <= 8192):
                raise MilCytoError(f"--{name} must be 0 (automatic) or 64-8192 px, got {v!r}")

    def to_json_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> MosaicConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class MaskSpec:
    """Where a crop's mask lives and which mask values are background.

    The mask of ``CELLS/<class>/<stem>.<ext>`` is ``FOLDER/<class>/<stem><suffix>.*`` (any
    image format, same size as the crop; palette indices or grey levels). Pixels whose value
    is in ``background`` are cut away; a crop without a mask file falls back to the ellipse.
    """

    folder: str
    suffix: str = ""
    background: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
