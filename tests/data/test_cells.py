"""Cell-centred instances: nucleus detection and crops on blob photos and synthetic fields."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mil_cyto.data.bags import load_bag
from mil_cyto.data.cells import NucleusConfig, centred_boxes, detect_nuclei
from mil_cyto.data.instances import cut_instances, instance_centres
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.synthetic import draw_field, reference_stain
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.errors import MilCytoError

BLOBS = ((40, 40, 8), (100, 30, 6), (60, 100, 9), (120, 110, 7))


def test_finds_each_blob_once_at_its_centre(blob_photo: Callable[..., np.ndarray]) -> None:
    photo = blob_photo(150, 160, BLOBS)
    found = detect_nuclei(photo)
    assert len(found) == len(BLOBS)
    centres = np.array([(x, y) for x, y, _ in BLOBS], dtype=float)
    dist = np.linalg.norm(found[:, None, :2] - centres[None], axis=2)
    assert dist.min(axis=0).max() <= 1.5  # every blob matched within 1.5 px
    assert dist.min(axis=1).max() <= 1.5  # and nothing else found


def test_touching_nuclei_are_split(blob_photo: Callable[..., np.ndarray]) -> None:
    photo = blob_photo(100, 120, ((40, 50, 9), (60, 50, 9)))  # overlap: one component
    assert len(detect_nuclei(photo)) == 2


def test_blank_photo_has_no_nuclei_and_crops_refuse_it() -> None:
    blank = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert detect_nuclei(blank).shape == (0, 3)
    with pytest.raises(MilCytoError, match="no nucleus"):
        cut_instances(blank, TilingConfig(tile_size=32, instances="cells"))


def test_crops_are_centred_and_inside_the_photo(blob_photo: Callable[..., np.ndarray]) -> None:
    photo = blob_photo(150, 160, BLOBS)
    tiles, coords = cut_instances(photo, TilingConfig(tile_size=32, instances="cells"))
    assert tiles.shape == (4, 3, 32, 32) and tiles.dtype == np.uint8
    assert (coords[:, 2] - coords[:, 0] == 32).all() and (coords[:, 3] - coords[:, 1] == 32).all()
    assert (coords[:, :2] >= 0).all()
    assert (coords[:, 2] <= 160).all() and (coords[:, 3] <= 150).all()
    x0, y0 = coords[0, :2]
    np.testing.assert_array_equal(tiles[0], photo[y0 : y0 + 32, x0 : x0 + 32].transpose(2, 0, 1))
    # a blob's centre pixel (dark) is the centre of its crop
    assert (tiles[:, :, 16, 16] < 150).all()


def test_instance_centres_are_the_nuclei_or_the_tile_middles(
    blob_photo: Callable[..., np.ndarray],
) -> None:
    """Nucleus crops report their nucleus (off-centre in a crop shifted at the edge); grid
    tiles their middle; the boxes are the instances' own."""
    photo = blob_photo(150, 160, [*BLOBS, (4, 140, 6)])  # one nucleus at the left edge
    cells = TilingConfig(tile_size=32, instances="cells")
    centres, boxes = instance_centres(photo, cells)
    np.testing.assert_array_equal(boxes, cut_instances(photo, cells)[1])
    np.testing.assert_allclose(centres, detect_nuclei(photo)[:, :2])
    inside = (centres >= boxes[:, :2]) & (centres <= boxes[:, 2:])
    assert inside.all()
    edge = np.argmin(centres[:, 0])
    assert centres[edge, 0] < 8 and boxes[edge, 0] == 0  # crop shifted, nucleus off-centre
    grid = TilingConfig(tile_size=32, stride=32)
    middles, tiles = instance_centres(photo, grid)
    np.testing.assert_allclose(middles, (tiles[:, :2] + tiles[:, 2:]) / 2)


def test_centred_boxes_shift_at_borders() -> None:
    boxes = centred_boxes(np.array([[1.0, 1.0], [99.0, 49.0]]), 20, height=50, width=100)
    np.testing.assert_array_equal(boxes, [[0, 0, 20, 20], [80, 30, 100, 50]])


def test_synthetic_field_every_atypical_cell_gets_an_instance() -> None:
    """On a synthetic CIN2+ field, >= 90% of cells and every atypical cell hold a detected
    nucleus, with at most ~1.6 detections per cell (one crop per cell, not per speck)."""
    rng = np.random.default_rng(3)
    image, cells = draw_field(rng, 400, 300, "CIN2+", reference_stain())
    cells = [c for c in cells if c["kind"] != "debris"]
    found = detect_nuclei(image, NucleusConfig())
    boxes = np.array([[c["x0"], c["y0"], c["x1"], c["y1"]] for c in cells], dtype=float)
    inside = (
        (found[:, None, 0] >= boxes[None, :, 0])
        & (found[:, None, 0] < boxes[None, :, 2])
        & (found[:, None, 1] >= boxes[None, :, 1])
        & (found[:, None, 1] < boxes[None, :, 3])
    )
    covered = inside.any(axis=0)
    atypical = np.array([c["grade"] != "normal" for c in cells])
    assert atypical.any()
    assert covered.mean() >= 0.9
    assert covered[atypical].all()
    assert len(found) <= 1.6 * len(cells)


def test_load_bag_with_cells_option(tmp_path, blob_photo, write_png) -> None:  # type: ignore[no-untyped-def]
    path = write_png(tmp_path / "a.png", blob_photo(150, 160, BLOBS))
    row = ManifestRow(image=path, image_id="a.png", patient_id="p", label=1)
    grid = load_bag(row, TilingConfig(tile_size=32, stride=32))
    cells = load_bag(row, TilingConfig(tile_size=32, stride=32, instances="cells"))
    assert len(cells.tiles) == 4 and len(grid.tiles) != 4
    assert cells.size == (150, 160)


def test_unknown_instances_option() -> None:
    with pytest.raises(MilCytoError, match="grid or cells"):
        TilingConfig(instances="nuclei")
