"""Mosaic fields from folder-per-class cell crops: format, determinism, cell-disjoint splits.

The crop set here is built by the test: four class folders (one dropped), crops of several
sizes and formats (PNG, JPEG, BMP, grey TIFF, RGBA PNG), a lenient mapping (LSIL / HSIL
aliases), and masks for some crops only.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.mosaic import (
    MaskSpec,
    MosaicConfig,
    generate_mosaics,
    load_sprite,
    read_mapping,
    scan_cells,
)
from mil_cyto.data.splits import fixed_split
from mil_cyto.data.synthetic import CELL_COLUMNS
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.localization import read_cell_boxes
from mil_cyto.mosaic import main

SIZES = {"benign": (30, 26), "lowgrade": (44, 38), "highgrade": (52, 60), "junk": (20, 20)}
FORMATS = ("png", "jpg", "bmp", "tif", "rgba.png")


def _crop(rng: np.random.Generator, w: int, h: int, nucleus: float) -> np.ndarray:
    """A pale cell with a dark nucleus of relative radius ``nucleus`` on near-white glass."""
    img = np.full((h, w, 3), 235.0) + rng.normal(0, 3, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    img[r < 0.8] = (200, 170, 190)
    img[r < nucleus] = (80, 50, 110)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cell_set(root: Path, per_class: int = 9) -> tuple[Path, Path]:
    """``root/cells/<class>/*`` in mixed sizes and formats, masks for half of the benign
    crops, and ``root/mapping.csv``; returns (cells folder, mapping file)."""
    rng = np.random.default_rng(0)
    cells = root / "cells"
    nucleus = {"benign": 0.15, "lowgrade": 0.3, "highgrade": 0.55, "junk": 0.1}
    for cls, (w, h) in SIZES.items():
        (cells / cls).mkdir(parents=True)
        for i in range(per_class):
            cw, ch = w + 3 * (i % 3), h + 2 * (i % 4)  # sizes vary within a class too
            arr = _crop(rng, cw, ch, nucleus[cls])
            fmt = FORMATS[i % len(FORMATS)]
            path = cells / cls / f"c{i:02d}.{fmt}"
            if fmt == "tif":
                Image.fromarray(arr).convert("L").save(path)
            elif fmt == "rgba.png":
                Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])).save(path)
            else:
                Image.fromarray(arr).save(path)
            if cls == "benign" and i % 2 == 0:
                yy, xx = np.mgrid[0:ch, 0:cw]
                r = np.hypot((xx - cw / 2) / (cw / 2), (yy - ch / 2) / (ch / 2))
                mask = np.where(r < 0.85, 2, 4).astype(np.uint8)
                (root / "masks" / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(
                    root / "masks" / cls / f"{path.name.split('.')[0]}_m.png"
                )
    mapping = root / "mapping.csv"
    mapping.write_text("folder,grade\nbenign,NILM\nlowgrade,LSIL\nhighgrade,HSIL\njunk,drop\n")
    return cells, mapping


TINY = MosaicConfig(n_images=24, seed=5, cells_per_field=(8, 12), images_per_patient=(2, 3))


@pytest.fixture(scope="module")
def cell_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cell_set(tmp_path_factory.mktemp("crops"))


@pytest.fixture(scope="module")
def mosaic(cell_set: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cells, mapping = cell_set
    out = tmp_path_factory.mktemp("mosaic") / "data"
    masks = MaskSpec(str(cells.parent / "masks"), "_m", (4,))
    return generate_mosaics(cells, read_mapping(mapping), out, TINY, masks=masks, progress=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_synthetic_format_and_labels(mosaic: Path) -> None:
    manifest = _rows(mosaic / "manifest.csv")
    assert list(manifest[0]) == ["image", "patient_id", "histology", "cytology", "hpv", "split"]
    cells = _rows(mosaic / "cells.csv")
    assert list(cells[0]) == list(CELL_COLUMNS)
    assert len(manifest) == TINY.n_images
    by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    for c in cells:
        by_image[c["image"]].append(c)
    for row in manifest:
        with Image.open(mosaic / row["image"]) as im:
            w, h = im.size
            assert im.mode == "RGB"
        placed = by_image[row["image"]]
        assert TINY.cells_per_field[0] - 2 <= len(placed) <= TINY.cells_per_field[1]
        highest = max((c["grade"] for c in placed), key=GRADES.index)
        assert row["histology"] == highest  # the field's label is its highest grade
        n_atyp = sum(c["grade"] == highest for c in placed) if highest != "normal" else 0
        if highest != "normal":
            assert 1 <= n_atyp <= TINY.atypical_per_field[1]
        if highest == "CIN1":
            assert {c["grade"] for c in placed} <= {"normal", "CIN1"}
        for c in placed:
            x0, y0, x1, y1 = (int(c[k]) for k in ("x0", "y0", "x1", "y1"))
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert c["kind"] in ("benign", "lowgrade", "highgrade")  # junk was dropped
    # every grade occurs, all three splits have fields, the loaders of training accept it
    assert {r["histology"] for r in manifest} == set(GRADES)
    rows = read_manifest(mosaic / "manifest.csv")
    split = fixed_split([r.split for r in rows])
    assert split is not None and min(len(split.train), len(split.val), len(split.test)) > 0
    assert read_cell_boxes(mosaic / "cells.csv")


def test_cells_disjoint_between_splits(mosaic: Path) -> None:
    assigned = {r["crop"]: r["split"] for r in _rows(mosaic / "cell_splits.csv")}
    assert set(assigned.values()) == {"train", "val", "test"}
    split_of_image = {r["image"]: r["split"] for r in _rows(mosaic / "manifest.csv")}
    placements = _rows(mosaic / "placements.csv")
    cells = _rows(mosaic / "cells.csv")
    assert len(placements) == len(cells)
    used: dict[str, set[str]] = defaultdict(set)
    for p, c in zip(placements, cells, strict=True):
        assert p["image"] == c["image"]
        assert p["crop"].split("/")[0] == c["kind"]
        assert assigned[p["crop"]] == split_of_image[p["image"]] == p["split"]
        used[p["crop"]].add(p["split"])
    assert all(len(s) == 1 for s in used.values())  # no crop in two splits
    # patients are disjoint as well
    patients: dict[str, set[str]] = defaultdict(set)
    for r in _rows(mosaic / "manifest.csv"):
        patients[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in patients.values())


def test_same_seed_same_bytes_other_seed_differs(
    cell_set: tuple[Path, Path], mosaic: Path, tmp_path: Path
) -> None:
    cells, mapping = cell_set
    masks = MaskSpec(str(cells.parent / "masks"), "_m", (4,))
    again = generate_mosaics(
        cells, read_mapping(mapping), tmp_path / "again", TINY, masks=masks, progress=False
    )
    assert _digest(again) == _digest(mosaic)
    other = MosaicConfig(**{**TINY.to_json_dict(), "seed": 6})
    diff = generate_mosaics(
        cells, read_mapping(mapping), tmp_path / "other", other, masks=masks, progress=False
    )
    assert _digest(diff)["images/img_00000.png"] != _digest(mosaic)["images/img_00000.png"]
    # reusing the same folder with the same settings is a cache hit; other settings refuse
    assert generate_mosaics(cells, read_mapping(mapping), again, TINY, masks=masks) == again
    with pytest.raises(MilCytoError, match="other crops or settings"):
        generate_mosaics(cells, read_mapping(mapping), again, other, masks=masks)


def test_command_on_another_cell_set(cell_set: tuple[Path, Path], tmp_path: Path) -> None:
    """The command, unchanged, on a set with other crop sizes, folder names and mapping, with
    a 2x rescale range and no masks."""
    cells, _ = cell_set
    other = tmp_path / "other_cells"
    for cls, new in (("benign", "Superficial"), ("highgrade", "Dyskeratotic"), ("junk", "Debris")):
        (other / new).mkdir(parents=True)
        for p in sorted((cells / cls).iterdir()):
            with Image.open(p) as im:
                im.resize((im.width * 2, im.height * 2)).save(other / new / (p.stem + ".png"))
    mapping = tmp_path / "map.csv"
    mapping.write_text("folder,grade\nSuperficial,normal\nDyskeratotic,CIN3\nDebris,drop\n")
    out = tmp_path / "out"
    argv = ["--cells", str(other), "--mapping", str(mapping), "--out", str(out)]
    argv += ["--n-images", "12", "--seed", "1", "--cells-per-field", "8,10", "--scale", "0.5,1"]
    assert main([*argv, "--no-progress"]) == 0
    manifest = _rows(out / "manifest.csv")
    assert {r["histology"] for r in manifest} == {"normal", "CIN2+"}  # no CIN1 folder
    with Image.open(out / manifest[0]["image"]) as im:
        # automatic field: 10 x 7.5 median crop sides (60-126 px here) at the mean scale 0.75
        assert 400 <= im.width <= 1000 and abs(im.height / im.width - 0.75) < 0.02
    assert {c["kind"] for c in _rows(out / "cells.csv")} == {"Superficial", "Dyskeratotic"}


def test_mask_cuts_background_and_ellipse_fallback(cell_set: tuple[Path, Path]) -> None:
    cells, mapping = cell_set
    crops = [c for c in scan_cells(cells, read_mapping(mapping)) if c.folder == "benign"]
    masks = MaskSpec(str(cells.parent / "masks"), "_m", (4,))
    with_mask = load_sprite(cells, crops[0], masks)  # c00 has a mask
    without = load_sprite(cells, crops[1], masks)  # c01 has none: feathered ellipse
    for sprite in (with_mask, without):
        assert sprite.od.dtype == np.float32 and (sprite.od >= 0).all()
        assert sprite.alpha.min() >= 0 and sprite.alpha.max() <= 1
        assert sprite.alpha[0, 0] < 0.05  # corners are cut away
        h, w = sprite.alpha.shape
        assert sprite.alpha[h // 2, w // 2] == pytest.approx(1.0)
        assert sprite.od[h // 2, w // 2].mean() > 0.5  # the dark nucleus keeps its density
    assert not np.array_equal(with_mask.alpha > 0.5, without.alpha > 0.5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name,grade\nbenign,normal\n", "header must be 'folder,grade'"),
        ("folder,grade\nbenign,weird\n", "line 2: folder 'benign': unknown grade"),
        ("folder,grade\nbenign,normal\nbenign,CIN1\n", "mapped twice"),
        ("folder,grade\nbenign,drop\n", "no folder is mapped"),
        ("folder,grade\n,normal\n", "empty 'folder'"),
    ],
)
def test_mapping_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(MilCytoError, match=match):
        read_mapping(path)


def test_input_errors(cell_set: tuple[Path, Path], tmp_path: Path) -> None:
    cells, _ = cell_set
    partial = {"benign": "normal", "lowgrade": "CIN1"}
    with pytest.raises(MilCytoError, match="not in the mapping file"):
        scan_cells(cells, partial)
    with pytest.raises(MilCytoError, match="holds no images"):
        scan_cells(cells, {**partial, "highgrade": "CIN2+", "junk": "drop", "nothere": "CIN1"})
    no_normal = {"benign": "drop", "lowgrade": "CIN1", "highgrade": "CIN2+", "junk": "drop"}
    with pytest.raises(MilCytoError, match="mapped to 'normal'"):
        generate_mosaics(cells, no_normal, tmp_path / "x", TINY, progress=False)
    few = tmp_path / "few"
    (few / "a").mkdir(parents=True)
    (few / "b").mkdir()
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(few / "a" / f"{i}.png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(few / "b" / "0.png")
    with pytest.raises(MilCytoError, match="too few to give train, val and test"):
        generate_mosaics(few, {"a": "normal", "b": "CIN2+"}, tmp_path / "y", TINY)
    (few / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MilCytoError, match="cannot read image"):
        generate_mosaics(few, {"a": "normal", "b": "drop"}, tmp_path / "z", TINY)
    assert not (tmp_path / "z").exists() and not any(
        p.name.startswith("z.partial") for p in tmp_path.iterdir()
    )
    with pytest.raises(MilCytoError, match="scale"):
        MosaicConfig(scale=(0.4, 1.0))
    with pytest.raises(MilCytoError, match="exceeds cells_per_field"):
        MosaicConfig(cells_per_field=(3, 5), atypical_per_field=(1, 5))


def test_command_reports_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--cells", str(tmp_path / "none"), "--mapping", str(tmp_path / "m.csv")]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "error: mapping file" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_fixed_split_column(tmp_path: Path) -> None:
    assert fixed_split([None, None]) is None
    split = fixed_split(["train", "test", "val", "train"])
    assert split is not None
    assert split.train.tolist() == [0, 3] and split.val.tolist() == [2]
    assert split.test.tolist() == [1]
    with pytest.raises(MilCytoError, match="empty on 1 row"):
        fixed_split(["train", None, "val", "test"])
    with pytest.raises(MilCytoError, match="no val row"):
        fixed_split(["train", "test"])
    (tmp_path / "manifest.csv").write_text(
        "image,patient_id,histology,split\na.png,P1,CIN1,Train\nb.png,P2,normal,holdout\n"
    )
    with pytest.raises(MilCytoError, match="line 3: column 'split' holds 'holdout'"):
        read_manifest(tmp_path / "manifest.csv", check_images=False)


@pytest.mark.slow  # a whole training run; fixed_split itself is tested above
def test_training_honours_the_split_column(mosaic: Path, tmp_path: Path) -> None:
    """A one-epoch run on the mosaics: its splits.json is the manifest's split column."""
    import json

    from mil_cyto.train import main as train_main

    run = tmp_path / "run"
    fast = ["--epochs", "1", "--quiet", "--tile-size", "96", "--stride", "96", "--threads", "1"]
    fast += ["--mode", "frozen"]
    assert train_main(["--data", str(mosaic), "--out", str(run), *fast]) == 0
    splits = json.loads((run / "splits.json").read_text())
    want: dict[str, list[str]] = defaultdict(list)
    for r in _rows(mosaic / "manifest.csv"):
        want[r["split"]].append(r["image"])
    assert {k: sorted(v) for k, v in splits.items()} == {k: sorted(v) for k, v in want.items()}
