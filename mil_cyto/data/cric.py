"""The real CRIC Cervix cells (``$MIL_CYTO_DATA/cric``): a cell table and rebuilt field photos.

The folder holds 100x100-px crops centred on annotated nuclei, one folder per Bethesda class,
and ``cells.csv`` (``cell_id, image_id, bethesda_system, nucleus_x, nucleus_y, crop``) saying
where each crop sits in its 1376x1020 CRIC photo: its top-left corner is
``(max(0, x - 50), max(0, y - 50))``. Pasting a photo's crops there rebuilds the annotated
part of the real photo (neighbouring crops agree pixel for pixel, bar a few crops of 7 of the
160 photos: 0.3% of the overlapping pixels, counted in the build record); the rest is glass.

Two grade mappings (the folder's SOURCE.md):

* cells (:func:`load_cric_cells`): NILM normal, LSIL CIN1, HSIL and SCC CIN2+; ASC-US and
  ASC-H ("atypical, undetermined") dropped, or with ``include_asc`` ASC-US CIN1 and ASC-H
  CIN2+;
* fields (:func:`build_cric_fields`): a photo's grade is its highest cell grade with
  ASC-US CIN1 and ASC-H CIN2+ (a photo holding ASC cells cannot be called normal).

Public entry points: :class:`CricCell`, :func:`load_cric_cells`, :func:`field_grade`,
:func:`build_cric_fields`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from mil_cyto.data.images import load_rgb
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_dir, write_csv
from mil_cyto.labels import GRADES

PHOTO_HEIGHT, PHOTO_WIDTH = 1020, 1376
"""Size of a CRIC photo in pixels (40x objective)."""

CROP_HALF = 50
"""A crop's top-left corner is ``(max(0, x - 50), max(0, y - 50))`` for nucleus ``(x, y)``."""

CELL_TABLE = "cells.csv"
CELL_TABLE_COLUMNS = ("cell_id", "image_id", "bethesda_system", "nucleus_x", "nucleus_y", "crop")

NILM = "Negative for intraepithelial lesion"
BETHESDA_CLASSES: tuple[str, ...] = (NILM, "ASC-US", "LSIL", "ASC-H", "HSIL", "SCC")

CELL_GRADE: dict[str, str | None] = {
    NILM: "normal",
    "ASC-US": None,
    "LSIL": "CIN1",
    "ASC-H": None,
    "HSIL": "CIN2+",
    "SCC": "CIN2+",
}
"""Cell-level mapping: ASC ("undetermined") dropped (None)."""

FIELD_GRADE: dict[str, str] = {
    NILM: "normal",
    "ASC-US": "CIN1",
    "LSIL": "CIN1",
    "ASC-H": "CIN2+",
    "HSIL": "CIN2+",
    "SCC": "CIN2+",
}
"""Field-level mapping (and the flagged secondary cell mapping, ``include_asc``)."""

FIELDS_RECORD = "cric_fields.json"
FIELD_MANIFEST_COLUMNS = ("image", "patient_id", "label", "n_cells", "highest_bethesda")
FIELD_CELL_COLUMNS = ("image", "x0", "y0", "x1", "y1", "grade", "kind", "cell_id")
_BUILD_VERSION = 1  # bump when the rebuilt pixels or the CSVs change


@dataclass(frozen=True)
class CricCell:
    """One crop: its CRIC ids, Bethesda class, 3-class ``grade`` (None: dropped ASC), the
    nucleus centre ``(x, y)`` in photo pixels and the crop's absolute path."""

    cell_id: str
    image_id: str
    bethesda: str
    grade: str | None
    x: int
    y: int
    crop: Path

    @property
    def corner(self) -> tuple[int, int]:
        """The crop's top-left corner ``(x0, y0)`` in the photo."""
        return max(0, self.x - CROP_HALF), max(0, self.y - CROP_HALF)


def _read_table(cric_dir: Path) -> list[dict[str, str]]:
    cric_dir = Path(cric_dir)
    if not cric_dir.is_dir():
        raise MilCytoError(
            f"CRIC folder {cric_dir} not found; point it at $MIL_CYTO_DATA/cric (the folder "
            "with cells.csv and one folder per Bethesda class)"
        )
    table = cric_dir / CELL_TABLE
    if not table.is_file():
        raise MilCytoError(
            f"{table} not found; the CRIC folder needs its cells.csv "
            f"({', '.join(CELL_TABLE_COLUMNS)})"
        )
    with table.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = set(CELL_TABLE_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise MilCytoError(f"{table}: missing columns {sorted(missing)}")
        rows = list(reader)
    if not rows:
        raise MilCytoError(f"{table}: no rows; it should list every crop")
    return rows


def load_cric_cells(cric_dir: Path, *, include_asc: bool = False) -> list[CricCell]:
    """Every crop of ``cells.csv``, in file order. ASC-US / ASC-H crops get ``grade`` None
    (dropped by the caller) unless ``include_asc`` maps them to CIN1 / CIN2+.

    Raises:
        MilCytoError: the folder or ``cells.csv`` is missing, a column or a crop file is
            missing, a Bethesda class is unknown, or a coordinate is not an integer.
    """
    cric_dir = Path(cric_dir)
    mapping = FIELD_GRADE if include_asc else CELL_GRADE
    cells = []
    for line, row in enumerate(_read_table(cric_dir), start=2):
        where = f"{cric_dir / CELL_TABLE} line {line}"
        bethesda = row["bethesda_system"].strip()
        if bethesda not in mapping:
            raise MilCytoError(
                f"{where}: unknown Bethesda class {bethesda!r}; expected "
                f"{', '.join(BETHESDA_CLASSES)}"
            )
        try:
            x, y = int(row["nucleus_x"]), int(row["nucleus_y"])
        except ValueError:
            raise MilCytoError(f"{where}: nucleus_x / nucleus_y must be integers") from None
        crop = cric_dir / row["crop"]
        if not crop.is_file():
            raise MilCytoError(f"{where}: crop {crop} not found; restore it or remove the row")
        cells.append(
            CricCell(
                row["cell_id"].strip(),
                row["image_id"].strip(),
                bethesda,
                mapping[bethesda],
                x,
                y,
                crop,
            )
        )
    return cells


def field_grade(bethesda: Iterable[str]) -> str:
    """A photo's grade: the highest of its cells' :data:`FIELD_GRADE` (``normal`` if none)."""
    return max((FIELD_GRADE[b] for b in bethesda), key=GRADES.index, default="normal")


def glass_colour(crops: Sequence[np.ndarray], quantile: float = 0.75) -> np.ndarray:
    """The glass colour behind a photo's crops, ``(3,)`` uint8: the per-channel median of the
    crops' one-pixel border pixels whose brightness (R + G + B) is at least its ``quantile``
    over those pixels. A crop's border lies ~50 px from its nucleus, mostly on glass or thin
    cytoplasm; its brightest quarter is glass."""
    border = np.concatenate(
        [
            np.concatenate([c[0], c[-1], c[1:-1, 0], c[1:-1, -1]]).reshape(-1, 3)
            for c in crops
            if c.shape[0] > 2 and c.shape[1] > 2
        ]
    )
    brightness = border.astype(np.int32).sum(axis=1)
    bright = border[brightness >= np.quantile(brightness, quantile)]
    return np.median(bright, axis=0).round().astype(np.uint8)


@dataclass(frozen=True)
class RebuiltPhoto:
    """A rebuilt photo ``(H, W, 3)`` uint8, each cell's crop box ``(x0, y0, x1, y1)``, the
    glass colour used, and how many pixels where two crops overlap disagreed."""

    image: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    glass: tuple[int, int, int]
    overlap_pixels: int
    disagreeing_pixels: int


def rebuild_photo(
    crops: Sequence[np.ndarray],
    corners: Sequence[tuple[int, int]],
    *,
    glass: Sequence[int] | None = None,
    size_hw: tuple[int, int] = (PHOTO_HEIGHT, PHOTO_WIDTH),
) -> RebuiltPhoto:
    """Paste ``crops`` ``(h, w, 3)`` uint8 at their top-left ``corners`` ``(x0, y0)`` on a
    ``size_hw`` canvas of ``glass`` colour (None: :func:`glass_colour` of these crops); later
    crops overwrite earlier ones where they overlap (the disagreeing pixels are counted).

    Raises:
        MilCytoError: a crop that does not fit inside the photo.
    """
    height, width = size_hw
    colour = np.asarray(glass if glass is not None else glass_colour(crops), dtype=np.uint8)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = colour
    filled = np.zeros((height, width), dtype=bool)
    boxes, overlap, disagree = [], 0, 0
    for crop, (x0, y0) in zip(crops, corners, strict=True):
        h, w = crop.shape[:2]
        if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
            raise MilCytoError(
                f"a {w}x{h} crop at ({x0}, {y0}) does not fit a {width}x{height} photo; "
                "check nucleus_x / nucleus_y in cells.csv"
            )
        seen = filled[y0 : y0 + h, x0 : x0 + w]
        region = image[y0 : y0 + h, x0 : x0 + w]
        overlap += int(seen.sum())
        disagree += int((seen & (region != crop).any(axis=2)).sum())
        region[:] = crop
        seen[:] = True
        boxes.append((x0, y0, x0 + w, y0 + h))
    red, green, blue = (int(c) for c in colour)
    return RebuiltPhoto(image, boxes, (red, green, blue), overlap, disagree)


def _fingerprint(cric_dir: Path, cells: Sequence[CricCell]) -> str:
    """SHA-256 over ``cells.csv`` and every crop's name and size (a changed set rebuilds)."""
    digest = hashlib.sha256((Path(cric_dir) / CELL_TABLE).read_bytes())
    for cell in cells:
        digest.update(f"{cell.crop.name}\t{cell.crop.stat().st_size}\n".encode())
    return digest.hexdigest()


def _existing(out_dir: Path, settings: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds fields built with ``settings``; raise when it holds
    something else."""
    if not out_dir.exists():
        return False
    record = out_dir / FIELDS_RECORD
    if record.is_file():
        try:
            found = json.loads(record.read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError):
            found = None
        if found == settings:
            return True
        raise MilCytoError(
            f"{out_dir} holds CRIC fields built from other crops or settings; delete it or "
            "choose another output folder"
        )
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return False
    raise MilCytoError(f"{out_dir} exists and holds no CRIC fields; choose another output folder")


def build_cric_fields(
    cric_dir: Path,
    out_dir: Path,
    *,
    image_ids: Sequence[str] | None = None,
    glass: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Rebuild the CRIC photos from their crops into ``out_dir`` (returned).

    Layout: ``images/<image_id>.png`` (1376x1020 RGB), ``manifest.csv`` (``image,
    patient_id, label, n_cells, highest_bethesda``; patient = the photo: CRIC does not say
    which photos share a slide), ``cells.csv`` (``image, x0, y0, x1, y1, grade, kind,
    cell_id``: one row per annotated cell, box = the crop's extent in the photo, grade by
    :data:`FIELD_GRADE`, kind = Bethesda class) and ``cric_fields.json`` (settings, glass
    colours, overlap check, counts). ``image_ids``: only these photos (default all);
    ``glass``: one RGB glass colour for every photo (default each photo's own estimate,
    :func:`glass_colour`). Built in ``<out>.partial-<pid>`` and renamed; an ``out_dir``
    already built from the same crops and settings is returned untouched.

    The cell box is the crop's extent rather than a nucleus-sized box: the crop is exactly
    the annotated, real part of the photo (the nucleus at its centre, its own cytoplasm
    around it), while CRIC gives no nucleus size to draw a tighter box from.

    Raises:
        MilCytoError: a missing folder, table or crop; an unknown image id; an ``out_dir``
            holding something else.
    """
    cric_dir, out_dir = Path(cric_dir), Path(out_dir)
    cells = load_cric_cells(cric_dir)
    by_photo = _cells_by_photo(cells)
    wanted = _wanted_photos(by_photo, image_ids, cric_dir)
    settings = {
        "version": _BUILD_VERSION,
        "source": _fingerprint(cric_dir, cells),
        "image_ids": wanted,
        "glass": [int(c) for c in glass] if glass is not None else None,
    }
    if _existing(out_dir, settings):
        return out_dir
    with atomic_dir(out_dir) as tmp:
        _write_fields(tmp, [(i, by_photo[i]) for i in wanted], settings, glass, progress)
    return out_dir


def _cells_by_photo(cells: Iterable[CricCell]) -> dict[str, list[CricCell]]:
    """The cells of each photo (image id -> its cells, in table order)."""
    by_photo: dict[str, list[CricCell]] = {}
    for cell in cells:
        by_photo.setdefault(cell.image_id, []).append(cell)
    return by_photo


def _wanted_photos(
    by_photo: dict[str, list[CricCell]], image_ids: Sequence[str] | None, cric_dir: Path
) -> list[str]:
    """``image_ids`` as strings (default every photo, in numeric order); raise on an id that
    is not in ``cric_dir``'s table."""
    wanted = sorted(by_photo, key=_id_key) if image_ids is None else [str(i) for i in image_ids]
    unknown = [i for i in wanted if i not in by_photo]
    if unknown:
        raise MilCytoError(f"image ids {unknown[:5]} are not in {cric_dir / CELL_TABLE}")
    return wanted


def _write_fields(
    tmp: Path,
    photos: Sequence[tuple[str, Sequence[CricCell]]],
    settings: dict[str, Any],
    glass: Sequence[int] | None,
    progress: bool,
) -> None:
    """Rebuild ``photos`` (image id, its cells) into ``tmp``: the PNGs, ``manifest.csv``,
    ``cells.csv`` and the build record (``settings``, counts, overlap check per photo)."""
    (tmp / "images").mkdir()
    manifest, cell_rows, checks = [], [], {}
    overlap = disagree = 0
    for image_id, members in tqdm(photos, desc="CRIC fields", unit="photo", disable=not progress):
        row, rows, photo = _write_field(tmp, image_id, members, glass)
        manifest.append(row)
        cell_rows += rows
        checks[image_id] = {
            "glass": list(photo.glass),
            "overlap_pixels": photo.overlap_pixels,
            "disagreeing_pixels": photo.disagreeing_pixels,
        }
        overlap += photo.overlap_pixels
        disagree += photo.disagreeing_pixels
    write_csv(tmp / "manifest.csv", FIELD_MANIFEST_COLUMNS, manifest)
    write_csv(tmp / "cells.csv", FIELD_CELL_COLUMNS, cell_rows)
    counts = {g: sum(row[2] == g for row in manifest) for g in GRADES}
    record = {
        "settings": settings,
        "counts": counts,
        "n_cells": len(cell_rows),
        "overlap_pixels": overlap,
        "disagreeing_pixels": disagree,
        "photos": checks,
    }
    (tmp / FIELDS_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _write_field(
    tmp: Path, image_id: str, members: Sequence[CricCell], glass: Sequence[int] | None
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], RebuiltPhoto]:
    """Rebuild one photo from its cells ``members`` into ``tmp/images/<image_id>.png``;
    returns its manifest row, its cell rows and the rebuilt photo."""
    crops = [load_rgb(c.crop, hint=f"cell {c.cell_id}") for c in members]
    photo = rebuild_photo(crops, [c.corner for c in members], glass=glass)
    rel = f"images/{image_id}.png"
    Image.fromarray(photo.image).save(tmp / rel, compress_level=3)
    grade = field_grade(c.bethesda for c in members)
    highest = max((c.bethesda for c in members), key=lambda b: _bethesda_rank(b, FIELD_GRADE))
    cell_rows = [
        (rel, *box, FIELD_GRADE[c.bethesda], c.bethesda, c.cell_id)
        for c, box in zip(members, photo.boxes, strict=True)
    ]
    return (rel, image_id, grade, len(members), highest), cell_rows, photo


def _id_key(image_id: str) -> tuple[int, str]:
    return (int(image_id), "") if image_id.isdigit() else (1 << 62, image_id)


def _bethesda_rank(bethesda: str, mapping: dict[str, str]) -> tuple[int, int]:
    """Order Bethesda classes by their grade, then by their place in :data:`BETHESDA_CLASSES`."""
    return GRADES.index(mapping[bethesda]), BETHESDA_CLASSES.index(bethesda)
