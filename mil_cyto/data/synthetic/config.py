"""The synthetic data set's settings (:class:`SynthConfig`), its file names and column names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES

GENERATOR_VERSION = 2
"""Bumped whenever the drawing changes, so that a cached data set is not silently reused."""

CELL_KINDS: tuple[str, ...] = (
    "superficial",
    "intermediate",
    "parabasal",
    "koilocyte",
    "hsil",
    "inflammatory",
    "debris",
)
"""Values of the ``kind`` column of ``cells.csv``."""

ATYPICAL_KIND: Mapping[str, str] = MappingProxyType({"CIN1": "koilocyte", "CIN2+": "hsil"})
"""The atypical cell kind that carries each abnormal grade (read-only)."""

MANIFEST_COLUMNS: tuple[str, ...] = ("image", "patient_id", "histology", "cytology", "hpv")
CELL_COLUMNS: tuple[str, ...] = ("image", "x0", "y0", "x1", "y1", "grade", "kind")

CONFIG_FILE = "synth_config.json"
MANIFEST_FILE = "manifest.csv"
CELLS_FILE = "cells.csv"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic data set; same config => byte-identical files.

    Attributes:
        n_images: number of field photos.
        seed: master seed; patients and every photo draw from streams derived from it.
        width, height: photo size in pixels.
        images_per_patient: inclusive range of photos per patient (one slide each).
        class_fractions: share of patients per grade (normal, CIN1, CIN2+); normalised.
        cells_per_field: inclusive range of cells (squamous, parabasal, inflammatory and
            atypical; debris not counted) in a field of the reference physical size, 800x600 px
            at 0.7 um/px; scaled by the physical area for other sizes.
        atypical_per_field: inclusive range of atypical cells of the photo's grade in an
            abnormal photo (a CIN2+ photo may also hold 0-2 koilocytes).
        um_per_px: micrometres per pixel of the photo.
    """

    n_images: int = 360
    seed: int = 0
    width: int = 800
    height: int = 600
    images_per_patient: tuple[int, int] = (2, 4)
    class_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3)
    cells_per_field: tuple[int, int] = (40, 150)
    atypical_per_field: tuple[int, int] = (1, 5)
    um_per_px: float = 0.7

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so that configs compare and hash consistently.
        for name in (
            "images_per_patient",
            "class_fractions",
            "cells_per_field",
            "atypical_per_field",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        try:
            self._validate()
        except (TypeError, ValueError) as exc:
            raise MilCytoError(f"invalid synthetic data config: {exc}") from None

    def _validate(self) -> None:
        def bad(msg: str) -> MilCytoError:
            return MilCytoError(f"invalid synthetic data config: {msg}")

        if int(self.n_images) != self.n_images or self.n_images < 1:
            raise bad(f"n_images must be a positive integer, got {self.n_images!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise bad(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.width < 64 or self.height < 64:
            raise bad(f"width and height must be at least 64 px, got {self.width}x{self.height}")
        for name in ("images_per_patient", "cells_per_field", "atypical_per_field"):
            rng = getattr(self, name)
            if len(rng) != 2 or not all(int(v) == v for v in rng) or not 1 <= rng[0] <= rng[1]:
                raise bad(f"{name} must be two integers 1 <= low <= high, got {rng!r}")
        fr = self.class_fractions
        if len(fr) != len(GRADES) or any(f < 0 for f in fr) or sum(fr) <= 0:
            raise bad(
                f"class_fractions must be {len(GRADES)} non-negative numbers with a "
                f"positive sum, got {fr!r}"
            )
        if not 0.1 <= self.um_per_px <= 5.0:
            raise bad(f"um_per_px must lie in [0.1, 5], got {self.um_per_px!r}")

    def to_json_dict(self) -> dict[str, Any]:
        """The config as written to ``synth_config.json`` (plus the generator version)."""
        d: dict[str, Any] = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
        }
        d["generator_version"] = GENERATOR_VERSION
        return d

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SynthConfig:
        """Inverse of :meth:`to_json_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
