"""Field photos composed of real single-cell crops ("mosaic bags", as MNIST-bags for Ilse et al.).

A folder-per-class set of cell crops plus a mapping file (class folder -> ``normal`` /
``CIN1`` / ``CIN2+`` / ``drop``) becomes a data set in the synthetic set's format: field
photos, ``manifest.csv`` (plus a ``split`` column) and ``cells.csv`` with every placed cell's
box, grade and class folder (``kind``). A field's label is the highest grade it holds.

How a field is made:

* Every crop is assigned once to train, val or test (stratified by class folder), so no
  cell appears in two splits; ``cell_splits.csv`` lists the assignment. Virtual patients
  (several fields each, one grade, one split) draw their cells from their split's pool only.
* Each crop becomes optical density relative to its own background (Beer-Lambert), cut out by
  its mask when one is given (``masks``), else by a feathered ellipse. It keeps its native
  pixel size (optionally rescaled within ``scale``, at most 2x either way), and turns by a
  right angle and flips at random, so no pixel is resampled by default.
* The glass comes from the synthetic generator (:mod:`mil_cyto.data.synthetic`): slide tint,
  faint mucus, uneven illumination, focus blur and sensor noise; cells darken it
  multiplicatively, so overlapping cells darken each other as on a real slide.

Public entry points: :class:`MosaicConfig`, :class:`MaskSpec`, :func:`read_mapping`,
:func:`scan_cells`, :func:`generate_mosaics`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from tqdm import tqdm

from mil_cyto.data.images import load_rgb
from mil_cyto.data.synthetic import (
    CELL_COLUMNS,
    CELLS_FILE,
    IMAGES_DIR,
    MANIFEST_FILE,
    _allocate,
    _Canvas,
    _positions,
    _render,
    random_stain,
    write_png,
)
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_dir, write_csv
from mil_cyto.labels import GRADES, parse_grade

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
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".ppm")


# --------------------------------------------------------------------------------------------
# configuration and inputs
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# one crop -> optical density and alpha
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CellSprite:
    """A crop ready to place: optical density ``od`` (h, w, 3) float32 >= 0 relative to the
    crop's own background, and coverage ``alpha`` (h, w) float32 in [0, 1]."""

    od: np.ndarray
    alpha: np.ndarray


def _ellipse_alpha(h: int, w: int, feather: float = 0.12) -> np.ndarray:
    """Feathered ellipse inscribed in an (h, w) crop (1 inside, 0 at the corners)."""
    yy = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (0.5 * h)
    xx = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (0.5 * w)
    r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L", "1", "I", "I;16"):
                im = im.convert("L")
            mask = np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MilCytoError(f"cannot read mask {path} ({err}); fix or remove it") from None
    if mask.shape != shape:
        raise MilCytoError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px but its crop is "
            f"{shape[1]}x{shape[0]}; masks must match their crops"
        )
    return mask


def _find_mask(cells_dir: Path, crop: CellCrop, masks: MaskSpec) -> Path | None:
    folder = Path(masks.folder)
    if not folder.is_absolute():
        folder = cells_dir / folder
    stem = Path(crop.rel_path).stem + masks.suffix
    sub = folder / crop.folder
    for ext in IMAGE_SUFFIXES:
        for cand in (sub / f"{stem}{ext}", sub / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def load_sprite(cells_dir: Path, crop: CellCrop, masks: MaskSpec | None = None) -> CellSprite:
    """Read one crop as optical density relative to its background, with its alpha.

    The background is the per-channel median of the mask's background pixels, else the 75th
    percentile of the crop's one-pixel border (near-white glass around the cell).
    """
    path = Path(cells_dir) / crop.rel_path
    rgb = load_rgb(path).astype(np.float32)
    h, w = rgb.shape[:2]
    fg: np.ndarray | None = None
    if masks is not None:
        mask_path = _find_mask(Path(cells_dir), crop, masks)
        if mask_path is not None:
            fg = ~np.isin(_read_mask(mask_path, (h, w)), masks.background)
            fg = ndimage.binary_fill_holes(fg)
    if fg is not None and (~fg).sum() >= 8 and fg.any():
        bg = np.median(rgb[~fg], axis=0)
        alpha = ndimage.gaussian_filter(fg.astype(np.float32), 0.6)
        alpha = np.where(fg, np.maximum(alpha, 0.5), alpha).astype(np.float32)
    else:
        border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
        bg = np.percentile(border, 75, axis=0)
        alpha = _ellipse_alpha(h, w)
    bg = np.maximum(bg, 1.0)
    od = -np.log(np.clip(np.maximum(rgb, 1.0) / bg, 1e-3, 1.0)).astype(np.float32)
    return CellSprite(od, alpha)


def _pose(sprite: CellSprite, rng: np.random.Generator, scale: tuple[float, float]) -> CellSprite:
    """A right-angle turn, a flip and (if ``scale`` is not (1, 1)) a bilinear rescale."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.random() < 0.5)
    factor = float(rng.uniform(*scale)) if scale[0] != scale[1] else float(scale[0])
    od, alpha = np.rot90(sprite.od, k), np.rot90(sprite.alpha, k)
    if flip:
        od, alpha = od[:, ::-1], alpha[:, ::-1]
    if factor != 1.0:
        od = ndimage.zoom(od, (factor, factor, 1), order=1, grid_mode=True, mode="nearest")
        alpha = ndimage.zoom(alpha, factor, order=1, grid_mode=True, mode="nearest")
    return CellSprite(np.ascontiguousarray(od), np.ascontiguousarray(alpha))


# --------------------------------------------------------------------------------------------
# planning: splits, patients, fields
# --------------------------------------------------------------------------------------------


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
        counts = _allocate(len(idx), fractions)
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
        SPLITS, _allocate(config.n_images, config.split_fractions), strict=True
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


# --------------------------------------------------------------------------------------------
# drawing one field
# --------------------------------------------------------------------------------------------


def _place(
    od_acc: np.ndarray, cover: np.ndarray, sprite: CellSprite, cx: float, cy: float
) -> tuple[int, int, int, int] | None:
    """Add ``sprite`` centred at (cx, cy); returns its clipped box (x0, y0, x1, y1) of
    alpha > 0.5, or None when nothing of it lands in the image."""
    H, W = cover.shape
    h, w = sprite.alpha.shape
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    ax0, ay0 = max(0, -x0), max(0, -y0)
    bx0, by0 = max(0, x0), max(0, y0)
    bx1, by1 = min(W, x0 + w), min(H, y0 + h)
    if bx0 >= bx1 or by0 >= by1:
        return None
    a = sprite.alpha[ay0 : ay0 + by1 - by0, ax0 : ax0 + bx1 - bx0]
    od_acc[by0:by1, bx0:bx1] += (
        a[..., None] * sprite.od[ay0 : ay0 + by1 - by0, ax0 : ax0 + bx1 - bx0]
    )
    cover[by0:by1, bx0:bx1] += a
    inside = a > 0.5
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return bx0 + int(cols[0]), by0 + int(rows[0]), bx0 + int(cols[-1]) + 1, by0 + int(rows[-1]) + 1


def draw_mosaic(
    rng: np.random.Generator,
    width: int,
    height: int,
    normal: Sequence[tuple[CellSprite, str]],
    atypical: Sequence[tuple[CellSprite, str, str]],
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    stain_gain: np.ndarray | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One field photo in memory.

    Args:
        rng: the field's random stream.
        width, height: photo size in px.
        normal: ``(sprite, kind)`` of the normal cells, placed in smear streaks first.
        atypical: ``(sprite, grade, kind)`` of the atypical cells, each put where the best of
            12 candidate spots overlaps the cells already placed the least, fully inside.
        scale: per-cell rescale range.
        stain_gain: (3,) multiplier of every cell's optical density (the slide's staining).

    Returns:
        ``(image, cells)``: (H, W, 3) uint8 RGB; one dict per cell visible in the photo with
        ``x0, y0, x1, y1`` (x1, y1 exclusive), ``grade``, ``kind`` and ``source`` (its index
        in ``normal`` followed by ``atypical``).
    """
    cv = _Canvas(rng, width, height, random_stain(rng))
    mucus = np.clip(cv.coarse[(slice(0, height), slice(0, width))], 0.0, None)
    cv.add_mix((0.1, 0.5, 0.4), (slice(0, height), slice(0, width)), np.float32(0.04) * mucus)
    glass = _render(cv, rng).astype(np.float32)
    od_acc = np.zeros((height, width, 3), dtype=np.float32)
    cover = np.zeros((height, width), dtype=np.float32)
    cells: list[dict[str, Any]] = []
    gain = np.ones(3, np.float32) if stain_gain is None else np.asarray(stain_gain, np.float32)

    def record(box: tuple[int, int, int, int], grade: str, kind: str, source: int) -> None:
        x0, y0, x1, y1 = box
        cells.append(
            {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "grade": grade, "kind": kind, "source": source}
        )

    for j, ((sprite, kind), (x, y)) in enumerate(
        zip(normal, _positions(rng, len(normal), width, height), strict=True)
    ):
        box = _place(od_acc, cover, _pose(sprite, rng, scale), float(x), float(y))
        if box is not None:
            record(box, "normal", kind, j)
    for j, (sprite, grade, kind) in enumerate(atypical, start=len(normal)):
        posed = _pose(sprite, rng, scale)
        h, w = posed.alpha.shape
        lo_x, hi_x = w / 2, max(w / 2, width - w / 2)
        lo_y, hi_y = h / 2, max(h / 2, height - h / 2)
        cand = rng.uniform((lo_x, lo_y), (hi_x, hi_y), (12, 2))
        table = np.pad(cover, ((1, 0), (1, 0))).cumsum(0).cumsum(1)

        def overlap(c: np.ndarray, h: int = h, w: int = w, table: np.ndarray = table) -> float:
            x0, y0 = max(0, int(c[0] - w / 2)), max(0, int(c[1] - h / 2))
            x1, y1 = min(width, x0 + w), min(height, y0 + h)
            return float(table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0])

        best = min(range(len(cand)), key=lambda i: overlap(cand[i]))
        box = _place(od_acc, cover, posed, float(cand[best][0]), float(cand[best][1]))
        if box is not None:
            record(box, grade, kind, j)
    od_acc *= gain
    image = np.clip(glass * np.exp(-od_acc) + 0.5, 0, 255).astype(np.uint8)
    return image, cells


# --------------------------------------------------------------------------------------------
# the data set on disk
# --------------------------------------------------------------------------------------------


def _fingerprint(cells_dir: Path, crops: Sequence[CellCrop], masks: MaskSpec | None) -> str:
    """SHA-256 over crop paths, grades and file sizes (a changed crop set rebuilds)."""
    h = hashlib.sha256()
    for c in crops:
        size = (Path(cells_dir) / c.rel_path).stat().st_size
        h.update(f"{c.rel_path}\t{c.grade}\t{size}\n".encode())
    h.update(json.dumps(asdict(masks) if masks else None, sort_keys=True).encode())
    return h.hexdigest()


def _existing(out_dir: Path, record: dict[str, Any]) -> bool:
    """True when ``out_dir`` holds this very data set; raise when it holds something else."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise MilCytoError(f"{out_dir} exists and is not a folder; choose another --out")
    cfg = out_dir / CONFIG_FILE
    if cfg.is_file():
        try:
            found = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found == record:
            return True
        raise MilCytoError(
            f"{out_dir} holds a mosaic data set made from other crops or settings; delete it "
            "or choose another --out"
        )
    if any(out_dir.iterdir()):
        raise MilCytoError(
            f"{out_dir} is not empty and is no mosaic data set; choose another --out"
        )
    return False


def generate_mosaics(
    cells_dir: Path,
    mapping: Mapping[str, str],
    out_dir: Path,
    config: MosaicConfig,
    *,
    masks: MaskSpec | None = None,
    progress: bool = True,
) -> Path:
    """Write a mosaic data set to ``out_dir`` and return it.

    Layout: ``images/img_00000.png ...``, ``manifest.csv`` (image, patient_id, histology,
    cytology, hpv, split; cytology repeats the field grade, hpv is empty), ``cells.csv``
    (image, x0, y0, x1, y1, grade, kind = class folder), ``placements.csv`` (image, crop, split;
    row for row beside ``cells.csv``: which crop each placed cell is), ``cell_splits.csv``
    (crop, folder, grade, split) and ``mosaic_config.json``. Built in ``<out>.partial-<pid>``
    and renamed; an existing ``out_dir`` with the same crops and config is returned untouched.

    Raises:
        MilCytoError: bad folders, mapping, crops or masks; too few crops for three splits;
            ``out_dir`` holding something else.
    """
    cells_dir, out_dir = Path(cells_dir), Path(out_dir)
    crops = scan_cells(cells_dir, mapping)
    if not any(c.grade == "normal" for c in crops):
        raise MilCytoError("no class folder is mapped to 'normal'; fields need normal cells")
    record = {
        "config": config.to_json_dict(),
        "mapping": dict(sorted(mapping.items())),
        "masks": asdict(masks) if masks else None,
        "cells_fingerprint": _fingerprint(cells_dir, crops, masks),
        "n_crops": len(crops),
    }
    record = json.loads(json.dumps(record))  # tuples -> lists, as read back from disk
    if _existing(out_dir, record):
        return out_dir

    split_of = assign_splits(crops, config.split_fractions, _rng(config.seed, 0))
    grades = [g for g in GRADES if any(c.grade == g for c in crops)]
    plans = plan_fields(config, grades, _rng(config.seed, 1))
    sprites = [load_sprite(cells_dir, c, masks) for c in crops]
    width, height = field_size(config, [max(s.alpha.shape) for s in sprites])
    pools = {
        (s, g): [i for i, c in enumerate(crops) if split_of[i] == s and c.grade == g]
        for s in SPLITS
        for g in GRADES
    }
    patient_gain: dict[str, np.ndarray] = {}

    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        manifest: list[tuple[Any, ...]] = []
        cell_rows: list[tuple[Any, ...]] = []
        placements: list[tuple[str, str, str]] = []
        digits = max(5, len(str(config.n_images - 1)))
        for plan in tqdm(plans, desc="mosaic fields", unit="img", disable=not progress):
            rng = _rng(config.seed, 2, plan.index)
            if plan.patient_id not in patient_gain:
                g = _rng(config.seed, 3, int(plan.patient_id[1:]))
                patient_gain[plan.patient_id] = np.exp(g.normal(0.0, 0.08, 3))
            n_cells = int(rng.integers(config.cells_per_field[0], config.cells_per_field[1] + 1))
            atypical: list[tuple[int, str]] = []
            if plan.grade != "normal":
                n_atyp = int(
                    rng.integers(config.atypical_per_field[0], config.atypical_per_field[1] + 1)
                )
                atypical += [
                    (i, plan.grade) for i in _draw(rng, pools[(plan.split, plan.grade)], n_atyp)
                ]
            if plan.grade == "CIN2+" and pools[(plan.split, "CIN1")]:
                lo, hi = config.cin1_in_cin2_field
                extra = int(rng.integers(lo, hi + 1))
                atypical += [(i, "CIN1") for i in _draw(rng, pools[(plan.split, "CIN1")], extra)]
            normal = _draw(rng, pools[(plan.split, "normal")], max(0, n_cells - len(atypical)))
            image, cells = draw_mosaic(
                rng,
                width,
                height,
                [(sprites[i], crops[i].folder) for i in normal],
                [(sprites[i], g, crops[i].folder) for i, g in atypical],
                scale=config.scale,
                stain_gain=patient_gain[plan.patient_id],
            )
            rel = f"{IMAGES_DIR}/img_{plan.index:0{digits}d}.png"
            write_png(tmp / rel, image)
            label = max((c["grade"] for c in cells), key=GRADES.index, default="normal")
            manifest.append((rel, plan.patient_id, label, label, "", plan.split))
            cell_rows += [
                (rel, c["x0"], c["y0"], c["x1"], c["y1"], c["grade"], c["kind"]) for c in cells
            ]
            placed = normal + [i for i, _ in atypical]
            placements += [(rel, crops[placed[c["source"]]].rel_path, plan.split) for c in cells]
        write_csv(tmp / MANIFEST_FILE, MOSAIC_MANIFEST_COLUMNS, manifest)
        write_csv(tmp / CELLS_FILE, CELL_COLUMNS, cell_rows)
        write_csv(tmp / PLACEMENTS_FILE, ("image", "crop", "split"), placements)
        write_csv(
            tmp / CELL_SPLITS_FILE,
            ("crop", "folder", "grade", "split"),
            [(c.rel_path, c.folder, c.grade, s) for c, s in zip(crops, split_of, strict=True)],
        )
        (tmp / CONFIG_FILE).write_text(
            json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return out_dir


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _draw(rng: np.random.Generator, pool: Sequence[int], n: int) -> list[int]:
    """``n`` crop indices from ``pool``: without replacement while the pool allows."""
    if n <= 0 or not pool:
        return []
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    return [pool[int(j)] for j in picks]
