"""The cell crops on disk: the mapping file (class folder -> grade) and the crops it selects."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mil_cyto.data.mosaic.config import DROP
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import parse_grade

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".ppm")
"""File suffixes read as crops (and as masks), compared in lower case."""


@dataclass(frozen=True)
class CellCrop:
    """One crop on disk: its path relative to the cells folder, class folder and grade."""

    rel_path: str
    folder: str
    grade: str


def read_mapping(path: Path) -> dict[str, str]:
    """Read the mapping CSV: header ``folder,grade``; grade is a grade name or ``drop``.

    Grades are read leniently (``CIN2``, ``HSIL`` -> ``CIN2+``; ``LSIL`` -> ``CIN1``).

    Raises:
        MilCytoError: missing file or column, empty or duplicate folder, unknown grade.
    """
    path = Path(path)
    if not path.is_file():
        raise MilCytoError(f"mapping file {path} not found; give a CSV with folder,grade rows")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise MilCytoError(
            f"cannot read mapping file {path} ({err}); save it as UTF-8 CSV"
        ) from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    if "folder" not in columns or "grade" not in columns:
        raise MilCytoError(
            f"{path}: the header must be 'folder,grade' (found: {', '.join(columns) or 'none'})"
        )
    mapping: dict[str, str] = {}
    for record in reader:
        where = f"{path} line {reader.line_num}"
        if None in record:
            raise MilCytoError(f"{where}: more cells than header columns; check the commas")
        folder = (record.get("folder") or "").strip()
        raw = (record.get("grade") or "").strip()
        if not folder:
            raise MilCytoError(f"{where}: empty 'folder' cell; name a class folder")
        if folder in mapping:
            raise MilCytoError(f"{where}: folder {folder!r} is mapped twice")
        if raw.lower() == DROP:
            mapping[folder] = DROP
            continue
        try:
            mapping[folder] = parse_grade(raw, missing_is_normal=False)
        except ValueError as err:
            raise MilCytoError(f"{where}: folder {folder!r}: {err}, or 'drop'") from None
    if not any(g != DROP for g in mapping.values()):
        raise MilCytoError(f"{path}: no folder is mapped to a grade; map at least one")
    return mapping


def scan_cells(cells_dir: Path, mapping: Mapping[str, str]) -> list[CellCrop]:
    """Every crop of the mapped class folders (``drop`` skipped), sorted by path.

    Raises:
        MilCytoError: the folder is missing, a class folder is not in the mapping (or the
            reverse), or a mapped folder holds no image.
    """
    cells_dir = Path(cells_dir)
    if not cells_dir.is_dir():
        raise MilCytoError(f"cells folder {cells_dir} not found; give a folder of class folders")
    present = sorted(
        p.name for p in cells_dir.iterdir() if p.is_dir() and any(_is_image(f) for f in p.iterdir())
    )
    unmapped = [f for f in present if f not in mapping]
    if unmapped:
        raise MilCytoError(
            f"class folders {unmapped} of {cells_dir} are not in the mapping file; add a row "
            "for each (grade normal, CIN1, CIN2+ or drop)"
        )
    crops: list[CellCrop] = []
    for folder, grade in sorted(mapping.items()):
        if grade == DROP:
            continue
        sub = cells_dir / folder
        files = sorted(f for f in sub.iterdir() if _is_image(f)) if sub.is_dir() else []
        if not files:
            raise MilCytoError(
                f"mapped class folder {sub} is missing or holds no images; fix the mapping"
            )
        crops += [CellCrop(f"{folder}/{f.name}", folder, grade) for f in files]
    return crops


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
