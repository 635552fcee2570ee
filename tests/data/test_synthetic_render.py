"""The synthetic renderer and the mosaic builder after their split into modules: pure functions of
their random stream, the data set on disk equal to the photo drawn in memory, and pins recorded
with the code before the split (what is pinned is CPU-independent: the cell kinds come from the
random stream alone; boxes get 1 px and channel means 0.5 grey level of slack, so a float
rounding difference on another CPU does not fail them, while any change to the order of the
random draws does)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.data.mosaic import CellSprite, draw_mosaic
from mil_cyto.data.synthetic import (
    Canvas,
    SynthConfig,
    draw_field,
    generate_dataset,
    plan_patients,
    positions,
    random_stain,
    reference_stain,
    render,
)

# Recorded with the single-module renderer (git HEAD b2d00d1) before the split.
CIN1_KINDS = ["superficial"] + ["intermediate"] * 4 + ["parabasal"] + ["inflammatory"] * 2
CIN1_KINDS += ["koilocyte"] * 2
CIN1_BOXES = [
    [175, 72, 269, 155],
    [276, 30, 320, 100],
    [114, 35, 203, 115],
    [213, 188, 281, 240],
    [0, 14, 76, 81],
    [63, 155, 95, 188],
    [70, 126, 86, 141],
    [72, 123, 85, 137],
    [121, 0, 189, 86],
    [40, 2, 125, 82],
]
CIN1_MEAN_RGB = [203.86, 229.51, 237.3]
CIN2_KINDS = ["intermediate", "intermediate", "superficial"] + ["intermediate"] * 3
CIN2_KINDS += ["debris", "hsil", "hsil"]
MOSAIC_BOXES = [  # x0, y0, x1, y1, source
    [31, 14, 41, 24, 0],
    [59, 7, 69, 17, 1],
    [3, 50, 13, 60, 2],
    [56, 16, 66, 26, 3],
    [9, 18, 19, 28, 4],
    [58, 34, 68, 44, 5],
    [31, 44, 51, 60, 6],
    [9, 30, 29, 46, 7],
]
MOSAIC_MEAN_RGB = [205.41, 197.57, 204.61]


def _field(seed: int, grade: str) -> tuple[np.ndarray, list[dict[str, object]]]:
    return draw_field(
        np.random.default_rng(seed),
        320 if grade == "CIN1" else 256,
        240 if grade == "CIN1" else 192,
        grade,
        reference_stain(),
        cells_per_field=(60, 80),
        atypical_per_field=(2, 3),
    )


def _mosaic(seed: int) -> tuple[np.ndarray, list[dict[str, object]]]:
    yy, xx = np.mgrid[:12, :12]
    disk = (((yy - 5.5) ** 2 + (xx - 5.5) ** 2) < 30).astype(np.float32)
    small = CellSprite(np.full((12, 12, 3), 0.4, np.float32) * disk[..., None], disk)
    big = CellSprite(np.full((16, 20, 3), 0.8, np.float32), np.ones((16, 20), np.float32))
    return draw_mosaic(
        np.random.default_rng(seed), 96, 64, [(small, "n")] * 6, [(big, "CIN2+", "h")] * 2
    )


def test_field_pins_from_before_the_split() -> None:
    img, cells = _field(0, "CIN1")
    assert [c["kind"] for c in cells] == CIN1_KINDS
    boxes = np.array([[c["x0"], c["y0"], c["x1"], c["y1"]] for c in cells])
    np.testing.assert_allclose(boxes, CIN1_BOXES, atol=1)
    np.testing.assert_allclose(img.reshape(-1, 3).mean(axis=0), CIN1_MEAN_RGB, atol=0.5)
    assert [c["kind"] for c in _field(7, "CIN2+")[1]] == CIN2_KINDS


def test_mosaic_pins_from_before_the_split() -> None:
    img, cells = _mosaic(3)
    boxes = [[c["x0"], c["y0"], c["x1"], c["y1"], c["source"]] for c in cells]
    np.testing.assert_allclose(boxes, MOSAIC_BOXES, atol=1)
    assert [c["grade"] for c in cells] == ["normal"] * 6 + ["CIN2+"] * 2
    np.testing.assert_allclose(img.reshape(-1, 3).mean(axis=0), MOSAIC_MEAN_RGB, atol=0.5)


@pytest.mark.parametrize("grade", ["normal", "CIN1", "CIN2+"])
def test_field_is_a_pure_function_of_its_stream(grade: str) -> None:
    first, cells = _field(11, grade)
    _field(12, "CIN2+")  # another photo in between: no state carried from photo to photo
    again, cells_again = _field(11, grade)
    assert np.array_equal(first, again) and cells == cells_again
    assert not np.array_equal(first, _field(13, grade)[0])


def test_mosaic_is_a_pure_function_of_its_stream() -> None:
    first, cells = _mosaic(5)
    _mosaic(6)
    again, cells_again = _mosaic(5)
    assert np.array_equal(first, again) and cells == cells_again


def test_dataset_photos_are_the_fields_drawn_in_memory(tmp_path: Path) -> None:
    """Photo ``i`` of a data set is :func:`draw_field` on stream (seed, spawn key (1, i)) with
    its patient's stain: the data set path and the in-memory path give the same pixels."""
    config = SynthConfig(n_images=4, seed=5, width=128, height=96, images_per_patient=(2, 2))
    out = generate_dataset(tmp_path / "ds", config, workers=1, progress=False)
    with (out / "cells.csv").open() as f:
        rows = list(csv.DictReader(f))
    for plan in plan_patients(config):
        for index in plan.images:
            rng = np.random.default_rng(np.random.SeedSequence(5, spawn_key=(1, index)))
            img, cells = draw_field(rng, 128, 96, plan.histology, plan.stain)
            name = f"images/img_{index:05d}.png"
            assert np.array_equal(np.asarray(Image.open(out / name)), img)
            on_disk = [
                (int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"]), r["grade"], r["kind"])
                for r in rows
                if r["image"] == name
            ]
            assert on_disk == [
                (c["x0"], c["y0"], c["x1"], c["y1"], c["grade"], c["kind"]) for c in cells
            ]


def test_canvas_api_shapes() -> None:
    """The public placement API: centres inside the field, an empty canvas renders as glass."""
    rng = np.random.default_rng(0)
    pts = positions(rng, 50, 120, 80)
    assert pts.shape == (50, 2)
    assert (pts >= 0).all() and (pts[:, 0] <= 119).all() and (pts[:, 1] <= 79).all()
    cv = Canvas(rng, 120, 80, random_stain(rng))
    assert cv.od.shape == (3, 80, 120) and cv.od.dtype == np.float32 and cv.cells == []
    img = render(cv, rng)
    assert img.shape == (80, 120, 3) and img.dtype == np.uint8
    assert img.mean() > 180  # bright glass, no cell
    assert not cv.od.any()  # rendering leaves the canvas unchanged
