"""Reading and validating ``manifest.csv``: one row per photo (or whole-slide image, see
:attr:`ManifestRow.is_slide`), image-level labels only."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES, grade_index, parse_grade, parse_hpv
from mil_cyto.slides.reader import is_slide_file

GRADE_COLUMNS: tuple[str, ...] = ("histology", "cytology", "label")
"""Columns that hold a grade; the training target is one of them."""

SPLIT_VALUES: tuple[str, ...] = ("train", "val", "test")
"""Values of the optional ``split`` column (a fixed split, e.g. cell-disjoint mosaics)."""

UM_PER_PX_LIMITS: tuple[float, float] = (0.05, 50.0)
"""Accepted values of the optional ``um_per_px`` column (micrometres per pixel)."""


@dataclass(frozen=True)
class ManifestRow:
    """One photo: its absolute path, patient, target class index and every label source."""

    image: Path
    image_id: str
    patient_id: str
    label: int
    sources: dict[str, str | None] = field(default_factory=dict)
    split: str | None = None  # the optional ``split`` column: train / val / test
    um_per_px: float | None = None  # the optional ``um_per_px`` column: micrometres per pixel

    @property
    def grade(self) -> str:
        return GRADES[self.label]

    @property
    def is_slide(self) -> bool:
        """Whether ``image`` is a whole-slide image (``.svs``, ``.ndpi``, pyramidal TIFF),
        read lazily by :mod:`mil_cyto.slides` rather than decoded as a photo."""
        return is_slide_file(self.image)


def default_label_column(columns: list[str]) -> str:
    """``histology`` when present (the study's target), else ``label``, else ``cytology``."""
    for name in GRADE_COLUMNS:
        if name in columns:
            return name
    raise MilCytoError(
        "manifest has no label column; add 'histology' (or 'label') with normal/CIN1/CIN2+"
    )


def read_manifest(
    path: Path, *, label_column: str | None = None, check_images: bool = True
) -> list[ManifestRow]:
    """Read ``manifest.csv`` (columns ``image, patient_id`` and a grade column).

    Image paths are relative to the manifest's folder. Empty grades count as ``normal``
    (the reference study's rule for photos without histology).

    Raises:
        MilCytoError: naming the file, the line and the fix, for a missing file or column,
            an empty image or patient cell, an unknown grade or HPV value, a duplicate image,
            or (with ``check_images``) an image file that does not exist.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise MilCytoError(f"manifest {path} not found; point --data at a folder with manifest.csv")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MilCytoError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 CSV"
        ) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = columns
        for needed in ("image", "patient_id"):
            if needed not in columns:
                raise MilCytoError(
                    f"{path}: missing column {needed!r} (found: {', '.join(columns) or 'none'}); "
                    "the header must have image, patient_id and a label column"
                )
        target = label_column or default_label_column(columns)
        if target not in GRADE_COLUMNS:
            raise MilCytoError(
                f"{path}: label column {target!r} does not hold grades; "
                f"use one of {', '.join(GRADE_COLUMNS)}"
            )
        if target not in columns:
            raise MilCytoError(
                f"{path}: label column {target!r} not found (found: {', '.join(columns)})"
            )
        rows: list[ManifestRow] = []
        seen: dict[str, int] = {}
        for record in reader:  # line_num counts physical lines, blank ones included
            rows.append(
                _parse_row(path, reader.line_num, record, target, columns, seen, check_images)
            )
    if not rows:
        raise MilCytoError(f"{path}: no rows; add one row per photo")
    return rows


def _parse_row(
    path: Path,
    line: int,
    record: dict[str, str | None],
    target: str,
    columns: list[str],
    seen: dict[str, int],
    check_images: bool,
) -> ManifestRow:
    where = f"{path} line {line}"
    if None in record:  # more cells than header columns
        raise MilCytoError(f"{where}: more cells than header columns; check quoting and commas")
    image = (record.get("image") or "").strip()
    patient = (record.get("patient_id") or "").strip()
    if not image:
        raise MilCytoError(f"{where}: empty 'image' cell; give the photo's path")
    if not patient:
        raise MilCytoError(f"{where}: empty 'patient_id' for {image!r}; splits need a patient")
    if image in seen:
        raise MilCytoError(f"{where}: image {image!r} already listed on line {seen[image]}")
    seen[image] = line
    sources: dict[str, str | None] = {}
    for column in columns:
        raw = record.get(column)
        try:
            if column in GRADE_COLUMNS:
                sources[column] = parse_grade(raw)
            elif column == "hpv":
                sources[column] = parse_hpv(raw)
        except ValueError as err:
            raise MilCytoError(f"{where}: column {column!r}: {err}") from None
    split = (record.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLIT_VALUES:
        raise MilCytoError(
            f"{where}: column 'split' holds {record.get('split')!r}; use train, val or test"
        )
    um_per_px = _parse_um_per_px(record.get("um_per_px"), where)
    full = (path.parent / image).resolve()
    if check_images and not full.is_file():
        raise MilCytoError(f"{where}: image {image!r} not found at {full}; fix or remove the row")
    return ManifestRow(
        image=full,
        image_id=image,
        patient_id=patient,
        label=grade_index(sources[target] or "normal"),
        sources=sources,
        split=split,
        um_per_px=um_per_px,
    )


def _parse_um_per_px(raw: str | None, where: str) -> float | None:
    """The optional ``um_per_px`` cell (micrometres per pixel of the photo; empty: unknown)."""
    text = (raw or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not UM_PER_PX_LIMITS[0] <= value <= UM_PER_PX_LIMITS[1]:
        raise MilCytoError(
            f"{where}: column 'um_per_px' holds {raw!r}; give the photo's micrometres per pixel "
            f"in [{UM_PER_PX_LIMITS[0]}, {UM_PER_PX_LIMITS[1]}] (about 0.25 at 40x) or leave it "
            "empty"
        )
    return value
