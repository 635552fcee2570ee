"""Pixel size: resampling to the working scale, boxes back in native pixels, the estimate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil_cyto.config import load_config_file
from mil_cyto.data.bags import load_bag
from mil_cyto.data.instances import instance_centres, load_photo
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.pixel_size import (
    WORKING_UM_PER_PX,
    boxes_to_native,
    boxes_to_working,
    estimate_um_per_px,
    resolve_pixel_size,
    to_working,
    working_factor,
)
from mil_cyto.data.synthetic import SynthConfig, draw_field, generate_dataset, reference_stain
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.errors import MilCytoError

CELLS = TilingConfig(tile_size=64, instances="cells")


def _field(seed: int, um_per_px: float, width: int = 800, height: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return draw_field(rng, width, height, "CIN1", reference_stain(), um_per_px=um_per_px)[0]


def _row(path: Path, um_per_px: float | None = None, name: str | None = None) -> ManifestRow:
    return ManifestRow(path, name or path.name, "p0", 0, {}, None, um_per_px)


def test_working_factor_is_exactly_one_at_the_working_size() -> None:
    assert working_factor(None) == 1.0
    assert working_factor(WORKING_UM_PER_PX) == 1.0
    assert working_factor(WORKING_UM_PER_PX * 1.03) == 1.0  # within the 5% tolerance
    assert working_factor(0.25) == pytest.approx(0.25 / 0.7)
    image = np.zeros((10, 12, 3), np.uint8)
    assert to_working(image, 1.0) is image
    assert to_working(image, 0.5).shape == (5, 6, 3)


def test_boxes_round_trip_and_stay_equal_squares_inside_the_photo() -> None:
    factor = 0.25 / 0.7  # a 40x photo shrinks
    native_hw = (1020, 1376)
    working_hw = (round(1020 * factor), round(1376 * factor))
    rng = np.random.default_rng(0)
    x0 = rng.integers(0, working_hw[1] - 64, 50)
    y0 = rng.integers(0, working_hw[0] - 64, 50)
    boxes = np.stack([x0, y0, x0 + 64, y0 + 64], 1).astype(np.int32)
    native = boxes_to_native(boxes, factor, native_hw)
    sides = native[:, 2:] - native[:, :2]
    assert (sides == round(64 / factor)).all()
    assert native[:, :2].min() >= 0
    assert (native[:, 2] <= native_hw[1]).all() and (native[:, 3] <= native_hw[0]).all()
    np.testing.assert_array_equal(boxes_to_working(native, factor, working_hw, 64), boxes)
    assert boxes_to_native(boxes, 1.0, native_hw) is not None
    np.testing.assert_array_equal(boxes_to_native(boxes, 1.0, native_hw), boxes)


def test_an_enlarged_photo_gives_the_same_nuclei_in_its_own_pixels(tmp_path: Path) -> None:
    """A 0.7 um/px field shown at 0.35 um/px (2x) is worked on at 0.7 again: the same
    nuclei, boxes twice the size and at twice the coordinates."""
    image = _field(3, 0.7)
    path = tmp_path / "big.png"
    Image.fromarray(image).resize((1600, 1200), Image.Resampling.LANCZOS).save(path)
    plan = load_photo(_row(path, 0.35), CELLS)
    assert plan.image.shape == image.shape and plan.size == (1200, 1600)
    native = plan.native_coords
    assert (native[:, 2] - native[:, 0] == 128).all()
    reference = instance_centres(image, CELLS)[0]  # (M, 2) at the working scale
    found = (native[:, :2] + native[:, 2:]) / 2.0 / 2.0  # back to working px
    dist = np.sqrt(((reference[:, None] - found[None]) ** 2).sum(-1)).min(1)
    assert np.mean(dist <= 3.0) >= 0.7  # resampling twice shifts some faint peaks (0.79 seen)
    bag = load_bag(_row(path, 0.35), CELLS)
    assert bag.tiles.shape[2:] == (64, 64) and bag.size == (1200, 1600)
    np.testing.assert_array_equal(bag.coords, native)
    known = load_photo(_row(path, 0.35), CELLS, known=native)
    np.testing.assert_array_equal(known.native_coords, native)


def test_unresampled_photo_is_read_as_before(tmp_path: Path) -> None:
    image = _field(4, 0.7)
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    plan = load_photo(_row(path, 0.7), CELLS)
    np.testing.assert_array_equal(plan.image, image)
    np.testing.assert_array_equal(plan.native_coords, instance_centres(image, CELLS)[1])


@pytest.mark.parametrize("um_per_px", [0.35, 1.0])
def test_estimate_recovers_the_synthetic_pixel_size(tmp_path: Path, um_per_px: float) -> None:
    """Synthetic sets drawn at another pixel size (random stains, every grade): the estimate
    from their nuclei alone (the generator's record ignored) is near the truth."""
    width, height = (1200, 900) if um_per_px < 0.7 else (800, 600)
    synth = SynthConfig(n_images=8, seed=1, um_per_px=um_per_px, width=width, height=height)
    folder = generate_dataset(tmp_path / "set", synth, workers=1, progress=False)
    rows = read_manifest(folder / "manifest.csv")
    estimate, detail = estimate_um_per_px(rows)
    assert estimate == pytest.approx(um_per_px, rel=0.2)  # measured: -10% to +6%
    assert set(detail["photos"]) <= {r.image_id for r in rows}


def test_resolve_order_manifest_flag_synthetic_estimate(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_field(5, 0.7)).save(path)
    rows = [_row(path, 0.25, "a"), _row(path, None, "b")]
    filled, record = resolve_pixel_size(rows, 0.5, tmp_path)
    assert [r.um_per_px for r in filled] == [0.25, 0.5] and record.source == "flag"
    assert record.from_manifest == 1
    (tmp_path / "synth_config.json").write_text(json.dumps({"um_per_px": 0.7}))
    filled, record = resolve_pixel_size(rows, None, tmp_path)
    assert filled[1].um_per_px == 0.7 and record.source == "synthetic"
    (tmp_path / "synth_config.json").unlink()
    filled, record = resolve_pixel_size(rows, None, tmp_path)
    assert record.source == "estimated" and record.estimate_detail is not None
    assert filled[1].um_per_px == pytest.approx(0.7, rel=0.2)
    filled, record = resolve_pixel_size([rows[0]], None, tmp_path)
    assert record.source == "manifest" and filled[0].um_per_px == 0.25


def test_manifest_column_and_bad_values(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "manifest.csv").write_text(
        "image,patient_id,label,um_per_px\na.png,p1,normal,0.25\nb.png,p2,CIN1,\n"
    )
    rows = read_manifest(tmp_path / "manifest.csv")
    assert [r.um_per_px for r in rows] == [0.25, None]
    (tmp_path / "manifest.csv").write_text("image,patient_id,label,um_per_px\na.png,p1,normal,x\n")
    with pytest.raises(MilCytoError, match="um_per_px"):
        read_manifest(tmp_path / "manifest.csv")
    with pytest.raises(MilCytoError, match="out of range"):
        resolve_pixel_size([replace(rows[1])], 500.0, tmp_path)


def test_a_run_config_with_its_pixel_size_record_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 2, "pixel_size": {"um_per_px": 0.2}}))
    assert load_config_file(path) == {"epochs": 2}
