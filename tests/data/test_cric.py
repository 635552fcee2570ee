"""CRIC cells and rebuilt fields (mil_cyto.data.cric): on a fake CRIC folder written here,
and on the real one (``$MIL_CYTO_DATA/cric``) when it is there."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.data.cric import (
    NILM,
    PHOTO_HEIGHT,
    PHOTO_WIDTH,
    build_cric_fields,
    field_grade,
    glass_colour,
    load_cric_cells,
)
from mil_cyto.data.manifest import read_manifest
from mil_cyto.errors import MilCytoError
from mil_cyto.localization import read_cell_boxes, read_cells

# photo id -> its cells: (cell_id, Bethesda class, nucleus x, nucleus y)
FAKE = {
    "7": [("70", NILM, 200, 300), ("71", NILM, 260, 330)],  # overlapping crops
    "8": [("80", NILM, 40, 30), ("81", "ASC-US", 700, 1000)],  # clipped top-left, bottom
    "9": [("90", "LSIL", 500, 500), ("91", "HSIL", 900, 400), ("92", "ASC-H", 1300, 900)],
}
GLASS = (231, 236, 240)


def _photo(seed: int) -> np.ndarray:
    """A random full-size 'photo' (noise on glass) from which the fake crops are cut."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (PHOTO_HEIGHT, PHOTO_WIDTH, 3), dtype=np.uint8)


@pytest.fixture
def fake_cric(tmp_path: Path) -> Path:
    """A CRIC folder: class folders of crops cut from three random photos, and cells.csv."""
    root = tmp_path / "cric"
    rows = []
    for image_id, cells in FAKE.items():
        photo = _photo(int(image_id))
        for cell_id, bethesda, x, y in cells:
            x0, y0 = max(0, x - 50), max(0, y - 50)
            crop = photo[y0 : y + 50, x0 : x + 50]
            rel = f"{bethesda}/{cell_id}.png"
            (root / bethesda).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(root / rel)
            rows.append((cell_id, image_id, bethesda, x, y, rel))
    with (root / "cells.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["cell_id", "image_id", "bethesda_system", "nucleus_x", "nucleus_y", "crop"]
        )
        writer.writerows(rows)
    return root


def test_cell_table_mapping(fake_cric: Path) -> None:
    cells = load_cric_cells(fake_cric)
    assert [c.cell_id for c in cells] == ["70", "71", "80", "81", "90", "91", "92"]
    assert [c.grade for c in cells] == ["normal", "normal", "normal", None, "CIN1", "CIN2+", None]
    flagged = load_cric_cells(fake_cric, include_asc=True)
    assert flagged[3].grade == "CIN1" and flagged[6].grade == "CIN2+"
    assert cells[2].corner == (0, 0) and cells[2].crop.is_file()
    assert field_grade([NILM, "ASC-US"]) == "CIN1" and field_grade([NILM]) == "normal"
    assert field_grade(["LSIL", "ASC-H"]) == "CIN2+"


def test_missing_folder_or_table(tmp_path: Path, fake_cric: Path) -> None:
    with pytest.raises(MilCytoError, match="CRIC folder .* not found"):
        load_cric_cells(tmp_path / "nowhere")
    (fake_cric / "cells.csv").unlink()
    with pytest.raises(MilCytoError, match="cells.csv not found"):
        build_cric_fields(fake_cric, tmp_path / "out")


def test_fields_paste_crops_exactly(fake_cric: Path, tmp_path: Path) -> None:
    out = build_cric_fields(fake_cric, tmp_path / "fields", glass=GLASS, progress=False)
    rows = read_manifest(out / "manifest.csv")
    assert [(r.image_id, r.patient_id, r.grade) for r in rows] == [
        ("images/7.png", "7", "normal"),
        ("images/8.png", "8", "CIN1"),
        ("images/9.png", "9", "CIN2+"),
    ]
    cells = read_cells(out / "cells.csv")
    for image_id, members in FAKE.items():
        rebuilt = np.asarray(Image.open(out / f"images/{image_id}.png"))
        assert rebuilt.shape == (PHOTO_HEIGHT, PHOTO_WIDTH, 3)
        photo = _photo(int(image_id))
        covered = np.zeros(rebuilt.shape[:2], dtype=bool)
        boxes = [c.box for c in cells[f"images/{image_id}.png"]]
        assert len(boxes) == len(members)
        for (_, _, x, y), box in zip(members, boxes, strict=True):
            x0, y0 = max(0, x - 50), max(0, y - 50)
            x1, y1 = min(PHOTO_WIDTH, x + 50), min(PHOTO_HEIGHT, y + 50)
            assert box == (x0, y0, x1, y1)
            covered[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(rebuilt[covered], photo[covered])  # pixel for pixel
        assert (rebuilt[~covered] == GLASS).all()
    grades = {(c.box, c.grade, c.kind) for c in cells["images/9.png"]}
    assert ((1250.0, 850.0, 1350.0, 950.0), "CIN2+", "ASC-H") in grades
    atypical = read_cell_boxes(out / "cells.csv")
    assert "images/7.png" not in atypical and len(atypical["images/9.png"]) == 3


def test_fields_cached_and_guarded(fake_cric: Path, tmp_path: Path) -> None:
    out = build_cric_fields(fake_cric, tmp_path / "fields", progress=False)
    stamp = (out / "images/8.png").stat().st_mtime_ns
    assert build_cric_fields(fake_cric, out, progress=False) == out  # cached: untouched
    assert (out / "images/8.png").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.partial-*"))
    crops = [np.asarray(Image.open(c.crop)) for c in load_cric_cells(fake_cric)[:2]]
    expected = glass_colour(crops)  # photo 7's own glass: its crops' bright border pixels
    assert expected.min() > 128  # the brightest quarter of uniform noise
    assert np.asarray(Image.open(out / "images/7.png"))[0, -1].tolist() == expected.tolist()
    with pytest.raises(MilCytoError, match="other crops or settings"):
        build_cric_fields(fake_cric, out, glass=GLASS, progress=False)
    with pytest.raises(MilCytoError, match="not in"):
        build_cric_fields(fake_cric, tmp_path / "other", image_ids=["12"], progress=False)


def _real_cric() -> Path:
    root = os.environ.get("MIL_CYTO_DATA")
    if not root:
        pytest.skip("MIL_CYTO_DATA is not set (the folder holding cric/); .ci/run sets it")
    path = Path(root) / "cric"
    if not (path / "cells.csv").is_file():
        pytest.skip(f"no CRIC cells at {path} (MIL_CYTO_DATA={root})")
    return path


def test_real_cric_counts_and_two_fields(tmp_path: Path) -> None:
    cric = _real_cric()
    cells = load_cric_cells(cric)
    assert len(cells) == 3629
    photos: dict[str, list[str]] = {}
    for cell in cells:
        photos.setdefault(cell.image_id, []).append(cell.bethesda)
    grades = [field_grade(b) for b in photos.values()]
    assert len(photos) == 160
    assert (grades.count("normal"), grades.count("CIN1"), grades.count("CIN2+")) == (25, 118, 17)
    kept = [c.grade for c in cells if c.grade]
    assert (kept.count("normal"), kept.count("CIN1"), kept.count("CIN2+")) == (2714, 355, 254)
    two = sorted(photos, key=int)[:2]
    out = build_cric_fields(cric, tmp_path / "fields", image_ids=two, progress=False)
    rows = read_manifest(out / "manifest.csv")
    assert [r.grade for r in rows] == [field_grade(photos[i]) for i in two]
    boxes = read_cells(out / "cells.csv")
    assert sum(len(v) for v in boxes.values()) == sum(len(photos[i]) for i in two)
