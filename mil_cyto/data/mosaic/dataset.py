"""The mosaic data set on disk: crops split, fields planned, drawn and written with their
tables (``manifest.csv``, ``cells.csv``, ``placements.csv``, ``cell_splits.csv``) and
``mosaic_config.json``; a folder holding the same crops and settings is reused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mil_cyto.data.mosaic.config import (
    CELL_SPLITS_FILE,
    CONFIG_FILE,
    MOSAIC_MANIFEST_COLUMNS,
    PLACEMENTS_FILE,
    SPLITS,
    MaskSpec,
    MosaicConfig,
)
from mil_cyto.data.mosaic.crops import CellCrop, scan_cells
from mil_cyto.data.mosaic.draw import draw_mosaic
from mil_cyto.data.mosaic.plan import FieldPlan, assign_splits, field_size, plan_fields
from mil_cyto.data.mosaic.sprites import CellSprite, load_sprite
from mil_cyto.data.synthetic.config import CELL_COLUMNS, CELLS_FILE, IMAGES_DIR, MANIFEST_FILE
from mil_cyto.data.synthetic.png import write_png
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_dir, write_csv
from mil_cyto.labels import GRADES


@dataclass(frozen=True, eq=False)
class _CropSet:
    """The crops, their sprites and, per (split, grade), the indices of the crops to draw from."""

    crops: Sequence[CellCrop]
    sprites: Sequence[CellSprite]
    pools: Mapping[tuple[str, str], list[int]]


@dataclass(frozen=True, eq=False)
class _Tables:
    """The rows of ``manifest.csv``, ``cells.csv`` and ``placements.csv``, field by field."""

    manifest: list[tuple[Any, ...]]
    cells: list[tuple[Any, ...]]
    placements: list[tuple[str, str, str]]


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
    record = _dataset_record(cells_dir, mapping, crops, config, masks)
    if _existing(out_dir, record):
        return out_dir

    split_of = assign_splits(crops, config.split_fractions, _rng(config.seed, 0))
    grades = [g for g in GRADES if any(c.grade == g for c in crops)]
    plans = plan_fields(config, grades, _rng(config.seed, 1))
    sprites = [load_sprite(cells_dir, c, masks) for c in crops]
    size = field_size(config, [max(s.alpha.shape) for s in sprites])
    pools = {
        (s, g): [i for i, c in enumerate(crops) if split_of[i] == s and c.grade == g]
        for s in SPLITS
        for g in GRADES
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        tables = _draw_fields(tmp, plans, _CropSet(crops, sprites, pools), config, size, progress)
        write_csv(tmp / MANIFEST_FILE, MOSAIC_MANIFEST_COLUMNS, tables.manifest)
        write_csv(tmp / CELLS_FILE, CELL_COLUMNS, tables.cells)
        write_csv(tmp / PLACEMENTS_FILE, ("image", "crop", "split"), tables.placements)
        write_csv(
            tmp / CELL_SPLITS_FILE,
            ("crop", "folder", "grade", "split"),
            [(c.rel_path, c.folder, c.grade, s) for c, s in zip(crops, split_of, strict=True)],
        )
        (tmp / CONFIG_FILE).write_text(
            json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return out_dir


def _dataset_record(
    cells_dir: Path,
    mapping: Mapping[str, str],
    crops: Sequence[CellCrop],
    config: MosaicConfig,
    masks: MaskSpec | None,
) -> dict[str, Any]:
    """What ``mosaic_config.json`` holds: config, mapping, masks and the crops' fingerprint,
    as read back from disk (tuples as lists)."""
    record = {
        "config": config.to_json_dict(),
        "mapping": dict(sorted(mapping.items())),
        "masks": asdict(masks) if masks else None,
        "cells_fingerprint": _fingerprint(cells_dir, crops, masks),
        "n_crops": len(crops),
    }
    loaded: dict[str, Any] = json.loads(json.dumps(record))
    return loaded


def _draw_fields(
    tmp: Path,
    plans: Sequence[FieldPlan],
    crop_set: _CropSet,
    config: MosaicConfig,
    size: tuple[int, int],
    progress: bool,
) -> _Tables:
    """Draw every planned field of ``size`` (width, height) px into ``tmp``; its table rows."""
    tables = _Tables([], [], [])
    crops, sprites = crop_set.crops, crop_set.sprites
    patient_gain: dict[str, np.ndarray] = {}
    digits = max(5, len(str(config.n_images - 1)))
    for plan in tqdm(plans, desc="mosaic fields", unit="img", disable=not progress):
        rng = _rng(config.seed, 2, plan.index)
        if plan.patient_id not in patient_gain:
            g = _rng(config.seed, 3, int(plan.patient_id[1:]))
            patient_gain[plan.patient_id] = np.exp(g.normal(0.0, 0.08, 3))
        normal, atypical = _pick_cells(rng, plan, config, crop_set.pools)
        image, cells = draw_mosaic(
            rng,
            size[0],
            size[1],
            [(sprites[i], crops[i].folder) for i in normal],
            [(sprites[i], g, crops[i].folder) for i, g in atypical],
            scale=config.scale,
            stain_gain=patient_gain[plan.patient_id],
        )
        rel = f"{IMAGES_DIR}/img_{plan.index:0{digits}d}.png"
        write_png(tmp / rel, image)
        label = max((c["grade"] for c in cells), key=GRADES.index, default="normal")
        tables.manifest.append((rel, plan.patient_id, label, label, "", plan.split))
        tables.cells.extend(
            (rel, c["x0"], c["y0"], c["x1"], c["y1"], c["grade"], c["kind"]) for c in cells
        )
        placed = normal + [i for i, _ in atypical]
        tables.placements.extend(
            (rel, crops[placed[c["source"]]].rel_path, plan.split) for c in cells
        )
    return tables


def _pick_cells(
    rng: np.random.Generator,
    plan: FieldPlan,
    config: MosaicConfig,
    pools: Mapping[tuple[str, str], list[int]],
) -> tuple[list[int], list[tuple[int, str]]]:
    """The field's crops from its split's pools: the normal crop indices, and the atypical
    ``(index, grade)`` (of the field's grade, plus a few CIN1 cells in a CIN2+ field)."""
    n_cells = int(rng.integers(config.cells_per_field[0], config.cells_per_field[1] + 1))
    atypical: list[tuple[int, str]] = []
    if plan.grade != "normal":
        n_atyp = int(rng.integers(config.atypical_per_field[0], config.atypical_per_field[1] + 1))
        atypical += [(i, plan.grade) for i in _draw(rng, pools[(plan.split, plan.grade)], n_atyp)]
    if plan.grade == "CIN2+" and pools[(plan.split, "CIN1")]:
        lo, hi = config.cin1_in_cin2_field
        extra = int(rng.integers(lo, hi + 1))
        atypical += [(i, "CIN1") for i in _draw(rng, pools[(plan.split, "CIN1")], extra)]
    normal = _draw(rng, pools[(plan.split, "normal")], max(0, n_cells - len(atypical)))
    return normal, atypical


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _draw(rng: np.random.Generator, pool: Sequence[int], n: int) -> list[int]:
    """``n`` crop indices from ``pool``: without replacement while the pool allows."""
    if n <= 0 or not pool:
        return []
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    return [pool[int(j)] for j in picks]
