"""Property-based tests (hypothesis): arbitrary rows, sizes and strings give a result or one
clear error (MilCytoError; ValueError from the bare label parser), never a crash."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.mosaic import (
    CellSprite,
    MosaicConfig,
    draw_mosaic,
    load_sprite,
    read_mapping,
    scan_cells,
)
from mil_cyto.data.tiling import TilingConfig, tile_photo
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES, parse_grade

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cell_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
grade_like = st.sampled_from(
    ["normal", "CIN1", "cin 2", "CIN3", "HSIL", "lsil", "NILM", "", " ", "n/a", "CIN2+", "x"]
)


@FAST
@given(st.one_of(cell_text, grade_like, st.none()))
def test_parse_grade_gives_a_grade_or_value_error(value: str | None) -> None:
    try:
        assert parse_grade(value) in GRADES
    except ValueError as err:
        assert "unknown grade" in str(err)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@FAST
@given(
    header=st.lists(
        st.one_of(
            st.sampled_from(["image", "patient_id", "histology", "cytology", "hpv", "split"]),
            cell_text,
        ),
        max_size=7,
    ),
    rows=st.lists(
        st.lists(st.one_of(cell_text, grade_like, st.sampled_from(["train", "val", "pos"]))),
        max_size=6,
    ),
    label_column=st.sampled_from([None, "histology", "cytology", "label", "hpv", "zz"]),
)
def test_manifest_reader_gives_rows_or_one_error(
    header: list[str], rows: list[list[str]], label_column: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.csv"
        path.write_text(_csv(header, rows), encoding="utf-8")
        try:
            out = read_manifest(path, label_column=label_column, check_images=False)
        except MilCytoError as err:
            assert str(err)
            return
    assert out and all(r.label in range(len(GRADES)) and r.patient_id for r in out)
    assert all(r.split in (None, "train", "val", "test") for r in out)


@FAST
@given(st.binary(max_size=200))
def test_manifest_reader_on_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.csv"
        path.write_bytes(data)
        try:
            read_manifest(path, check_images=False)
        except MilCytoError as err:
            assert str(err)


@FAST
@given(
    h=st.integers(1, 120),
    w=st.integers(1, 120),
    tile=st.integers(-4, 80),
    stride=st.integers(-4, 80),
    min_tissue=st.floats(-0.5, 1.5, allow_nan=False),
    fill=st.integers(0, 255),
    seed=st.integers(0, 3),
)
def test_tiler_gives_tiles_or_one_error(
    h: int, w: int, tile: int, stride: int, min_tissue: float, fill: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), fill, np.uint8)
    if seed:  # some dark blobs
        image[rng.random((h, w)) < 0.3] = 60
    try:
        config = TilingConfig(tile, stride, min_tissue)
        tiles, coords = tile_photo(image, config)
    except MilCytoError as err:
        assert str(err)
        return
    assert tiles.shape == (len(coords), 3, tile, tile) and tiles.dtype == np.uint8
    assert (coords[:, 0] >= 0).all() and (coords[:, 2] <= w).all() and (coords[:, 3] <= h).all()


@FAST
@given(
    n_images=st.integers(-2, 50),
    cells=st.tuples(st.integers(-1, 50), st.integers(-1, 50)),
    atyp=st.tuples(st.integers(-1, 8), st.integers(-1, 8)),
    scale=st.tuples(st.floats(0, 3, allow_nan=False), st.floats(0, 3, allow_nan=False)),
    size=st.tuples(st.integers(-5, 9000), st.integers(-5, 9000)),
    fractions=st.tuples(*(st.floats(-1, 2, allow_nan=False),) * 3),
)
def test_mosaic_config_is_valid_or_one_error(
    n_images: int,
    cells: tuple[int, int],
    atyp: tuple[int, int],
    scale: tuple[float, float],
    size: tuple[int, int],
    fractions: tuple[float, float, float],
) -> None:
    try:
        config = MosaicConfig(
            n_images=n_images,
            cells_per_field=cells,
            atypical_per_field=atyp,
            scale=scale,
            width=size[0],
            height=size[1],
            split_fractions=fractions,
        )
    except MilCytoError as err:
        assert str(err)
        return
    assert config.cells_per_field[0] >= config.atypical_per_field[1]
    assert 0.5 <= config.scale[0] <= config.scale[1] <= 2


@FAST
@given(st.text(max_size=120))
def test_mapping_reader_gives_a_mapping_or_one_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "map.csv"
        path.write_text(text, encoding="utf-8")
        try:
            mapping = read_mapping(path)
        except MilCytoError as err:
            assert str(err)
            return
    assert mapping and set(mapping.values()) <= {*GRADES, "drop"}


@FAST
@given(
    sizes=st.lists(st.tuples(st.integers(1, 90), st.integers(1, 90)), min_size=1, max_size=8),
    field=st.tuples(st.integers(64, 160), st.integers(64, 160)),
    seed=st.integers(0, 2**16),
)
def test_mosaic_drawing_any_crop_sizes(
    sizes: list[tuple[int, int]], field: tuple[int, int], seed: int
) -> None:
    """Crops of any size (even larger than the field) give a photo of the field's size and
    boxes inside it."""
    rng = np.random.default_rng(seed)
    sprites = [
        CellSprite(rng.uniform(0, 2, (h, w, 3)).astype(np.float32), np.ones((h, w), np.float32))
        for h, w in sizes
    ]
    image, cells = draw_mosaic(
        rng,
        field[0],
        field[1],
        [(s, "n") for s in sprites[:-1]],
        [(sprites[-1], "CIN2+", "a")],
        scale=(0.5, 2.0),
    )
    assert image.shape == (field[1], field[0], 3) and image.dtype == np.uint8
    for c in cells:
        assert 0 <= c["x0"] < c["x1"] <= field[0] and 0 <= c["y0"] < c["y1"] <= field[1]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "1"])
def test_crops_in_any_pil_mode(tmp_path: Path, mode: str) -> None:
    from PIL import Image

    (tmp_path / "c" / "a").mkdir(parents=True)
    arr = np.full((17, 23, 3), 230, np.uint8)
    arr[5:12, 8:15] = 70
    im = Image.fromarray(arr)
    im = im.convert("I;16") if mode == "I;16" else im.convert(mode)
    im.save(tmp_path / "c" / "a" / "x.png")
    crop = scan_cells(tmp_path / "c", {"a": "normal"})[0]
    sprite = load_sprite(tmp_path / "c", crop)
    assert sprite.od.shape == (17, 23, 3) and np.isfinite(sprite.od).all()
