"""Photo reading (any PIL mode -> RGB uint8) and tiling into tissue bags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import binary_opening
from skimage.morphology import disk

from mil_cyto.data.images import load_rgb
from mil_cyto.data.tiling import (
    TilingConfig,
    grid_coords,
    open_cross,
    tile_photo,
    tissue_fraction,
    tissue_mask,
)
from mil_cyto.errors import MilCytoError

Photo = Callable[..., np.ndarray]
WritePng = Callable[[Path, np.ndarray], Path]

# ---------------------------------------------------------------- reading


def _check_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8


def test_rgb_png_round_trip(tmp_path: Path, blob_photo: Photo, write_png: WritePng) -> None:
    photo = blob_photo(64, 80)
    out = load_rgb(write_png(tmp_path / "rgb.png", photo))
    _check_rgb(out, 64, 80)
    np.testing.assert_array_equal(out, photo)


def test_grayscale_loads_as_rgb(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))  # (30, 50)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    out = load_rgb(path)
    _check_rgb(out, 30, 50)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_transparent_is_white_glass(tmp_path: Path) -> None:
    rgba = np.zeros((20, 24, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = load_rgb(path)
    _check_rgb(out, 20, 24)
    assert (out[:10] == (10, 20, 30)).all()
    assert (out[10:] == 255).all()


def test_palette_loads_as_rgb(tmp_path: Path, blob_photo: Photo) -> None:
    photo = blob_photo(32, 40)
    path = tmp_path / "pal.png"
    Image.fromarray(photo).quantize(colors=8).save(path)
    assert Image.open(path).mode == "P"
    expected = np.asarray(Image.open(path).convert("RGB"))
    out = load_rgb(path)
    _check_rgb(out, 32, 40)
    np.testing.assert_array_equal(out, expected)


def test_16_bit_loads_as_rgb_uint8(tmp_path: Path) -> None:
    deep = (np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)  # up to ~60000
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_rgb(path)
    _check_rgb(out, 30, 40)
    assert out.max() == 255 and out.min() == 0
    # brightness order survives the rescale
    assert out[0, 0, 0] < out[15, 20, 0] < out[-1, -1, 0]


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(MilCytoError, match="corrupt.png"):
        load_rgb(path)


def test_truncated_png_names_the_file(
    tmp_path: Path, blob_photo: Photo, write_png: WritePng
) -> None:
    whole = write_png(tmp_path / "whole.png", blob_photo(96, 96, seed=1)).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MilCytoError, match="truncated.png"):
        load_rgb(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="absent.png"):
        load_rgb(tmp_path / "absent.png")


def test_hint_is_in_the_message(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="manifest row 'x'"):
        load_rgb(tmp_path / "absent.png", hint="manifest row 'x'")


# ---------------------------------------------------------------- tiling

CFG = TilingConfig(tile_size=32, stride=32, min_tissue=0.05)


def test_tiles_and_coords_match_the_image(blob_photo: Photo) -> None:
    photo = blob_photo(96, 128, blobs=((20, 20, 8), (100, 70, 10), (60, 50, 6)))
    tiles, coords = tile_photo(photo, CFG)
    assert tiles.dtype == np.uint8 and coords.dtype == np.int32
    assert tiles.ndim == 4 and tiles.shape[1:] == (3, 32, 32)
    assert coords.shape == (len(tiles), 4)
    assert len(tiles) >= 3
    for tile, (x0, y0, x1, y1) in zip(tiles, coords, strict=True):
        assert x1 - x0 == 32 and y1 - y0 == 32
        np.testing.assert_array_equal(tile, photo[y0:y1, x0:x1].transpose(2, 0, 1))


def test_background_dropped_and_blob_tiles_kept(blob_photo: Photo) -> None:
    # blobs fully inside three grid cells of a 4x4 grid of 32-px tiles
    blobs = ((16, 16, 9), (80, 48, 9), (112, 112, 9))
    photo = blob_photo(128, 128, blobs=blobs)
    _, coords = tile_photo(photo, CFG)
    kept = {(int(x0), int(y0)) for x0, y0, _, _ in coords}
    assert kept == {(0, 0), (64, 32), (96, 96)}


def test_tissue_mask_marks_blobs_not_glass(blob_photo: Photo) -> None:
    photo = blob_photo(64, 64, blobs=((32, 32, 10),))
    mask = tissue_mask(photo)
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert mask[32, 32] and mask[28:36, 28:36].all()
    assert not mask[:10].any() and not mask[:, :10].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_mask_agrees_with_the_float64_search(seed: int) -> None:
    """The 8-bit histogram search marks the same tissue as Otsu on ``rgb2gray``'s float64
    grey with the 95th-percentile cap (the search it replaced) up to grey rounding."""
    from skimage.color import rgb2gray
    from skimage.filters import threshold_otsu

    from mil_cyto.data.synthetic import draw_field, random_stain

    rng = np.random.default_rng(seed)
    photo, _ = draw_field(rng, 320, 240, "CIN2+", random_stain(rng))
    grey = rgb2gray(photo)
    threshold = min(threshold_otsu(grey), float(np.percentile(grey, 95)) - 0.03)
    reference = open_cross(grey < threshold)
    mask = tissue_mask(photo)
    assert 0.02 < reference.mean() < 0.98  # a real field: neither all glass nor all cells
    assert (mask != reference).mean() < 0.015


def test_stride_smaller_than_tile(blob_photo: Photo) -> None:
    photo = blob_photo(96, 96, blobs=((48, 48, 20),))
    cfg = TilingConfig(tile_size=32, stride=16, min_tissue=0.05)
    tiles, coords = tile_photo(photo, cfg)
    assert len(tiles) > len(tile_photo(photo, CFG)[0])
    assert set(np.unique(coords[:, :2]).tolist()) <= {0, 16, 32, 48, 64}
    for tile, (x0, y0, x1, y1) in zip(tiles, coords, strict=True):
        np.testing.assert_array_equal(tile, photo[y0:y1, x0:x1].transpose(2, 0, 1))


def test_grid_coords_cover_the_photo_flush_at_the_edge() -> None:
    coords = grid_coords(100, 70, CFG)
    # rows start at 0, 32, 64 plus one flush with the bottom (68); columns at 0, 32 and 38
    assert sorted(set(coords[:, 1].tolist())) == [0, 32, 64, 68]
    assert sorted(set(coords[:, 0].tolist())) == [0, 32, 38]
    assert coords.shape == (12, 4)
    assert coords[:, 2].max() == 70 and coords[:, 3].max() == 100
    assert (coords[:, 2] - coords[:, 0] == 32).all() and (coords[:, 3] - coords[:, 1] == 32).all()


def test_grid_coords_exact_fit_adds_no_extra_tile() -> None:
    coords = grid_coords(96, 64, CFG)
    assert coords.shape == (6, 4)
    assert sorted(set(coords[:, 1].tolist())) == [0, 32, 64]


@settings(max_examples=60, deadline=None, database=None)
@given(
    height=st.integers(8, 150),
    width=st.integers(8, 150),
    tile=st.integers(8, 48),
    stride=st.integers(1, 60),
)
def test_grid_coords_property(height: int, width: int, tile: int, stride: int) -> None:
    if tile > min(height, width):
        return
    coords = grid_coords(height, width, TilingConfig(tile_size=tile, stride=stride))
    x0, y0, x1, y1 = coords.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    assert ((x0 % stride == 0) | (x1 == width)).all()
    assert ((y0 % stride == 0) | (y1 == height)).all()
    assert len({tuple(c) for c in coords.tolist()}) == len(coords)  # no duplicates
    if stride <= tile:  # then every pixel lies in some tile
        covered = np.zeros((height, width), dtype=bool)
        for a, b, c, d in coords:
            covered[b:d, a:c] = True
        assert covered.all()


def test_image_smaller_than_one_tile(blob_photo: Photo) -> None:
    with pytest.raises(MilCytoError, match="smaller than one"):
        tile_photo(blob_photo(20, 100, blobs=()), CFG, name="tiny.png")


def test_white_image_is_an_empty_bag() -> None:
    white = np.full((96, 96, 3), 255, dtype=np.uint8)
    with pytest.raises(MilCytoError, match="empty bag") as info:
        tile_photo(white, CFG, name="glass.png")
    assert "glass.png" in str(info.value)


def test_noisy_glass_is_an_empty_bag(blob_photo: Photo) -> None:
    with pytest.raises(MilCytoError, match="empty bag"):
        tile_photo(blob_photo(96, 96, blobs=()), CFG)


@pytest.mark.parametrize(
    "kwargs", [{"tile_size": 4}, {"stride": 0}, {"min_tissue": -0.1}, {"min_tissue": 1.5}]
)
def test_bad_tiling_config(kwargs: dict[str, float]) -> None:
    with pytest.raises(MilCytoError):
        TilingConfig(**kwargs)  # type: ignore[arg-type]


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    height=st.integers(8, 120),
    width=st.integers(8, 120),
    tile=st.integers(8, 48),
    stride=st.integers(4, 48),
    n_blobs=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_tiling_property(
    height: int, width: int, tile: int, stride: int, n_blobs: int, seed: int, blob_photo: Photo
) -> None:
    rng = np.random.default_rng(seed)
    blobs = [
        (int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(2, 15)))
        for _ in range(n_blobs)
    ]
    photo = blob_photo(height, width, blobs=blobs, seed=seed)
    cfg = TilingConfig(tile_size=tile, stride=stride, min_tissue=0.05)
    try:
        tiles, coords = tile_photo(photo, cfg)
    except MilCytoError:
        return
    assert len(tiles) == len(coords) > 0
    assert tiles.shape[1:] == (3, tile, tile)
    assert (coords[:, 0] >= 0).all() and (coords[:, 1] >= 0).all()
    assert (coords[:, 2] <= width).all() and (coords[:, 3] <= height).all()
    assert (coords[:, 2] - coords[:, 0] == tile).all()
    assert ((coords[:, 0] % stride == 0) | (coords[:, 2] == width)).all()
    assert ((coords[:, 1] % stride == 0) | (coords[:, 3] == height)).all()
    x0, y0, x1, y1 = coords[-1]
    np.testing.assert_array_equal(tiles[-1], photo[y0:y1, x0:x1].transpose(2, 0, 1))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.floats(0.0, 1.0),
    st.integers(0, 2**31 - 1),
)
def test_cross_opening_equals_scipys(height: int, width: int, density: float, seed: int) -> None:
    mask = np.random.default_rng(seed).random((height, width)) < density
    expected = binary_opening(mask, structure=disk(1))
    np.testing.assert_array_equal(open_cross(mask), expected)


@pytest.mark.parametrize("tile, stride", [(16, 8), (32, 32), (64, 48), (70, 1)])
def test_tissue_fraction_equals_each_tiles_mean(tile: int, stride: int) -> None:
    """Grid boxes and scattered boxes, flush with the edges or not."""
    rng = np.random.default_rng(tile)
    mask = rng.random((70, 90)) < 0.4
    grid = grid_coords(70, 90, TilingConfig(tile_size=tile, stride=stride))
    x0 = rng.integers(0, 90 - tile + 1, 400)
    y0 = rng.integers(0, 70 - tile + 1, 400)
    scattered = np.stack([x0, y0, x0 + tile, y0 + tile], 1).astype(np.int32)
    for coords in (grid, scattered):
        expected = np.array([mask[y0:y1, x0:x1].mean() for x0, y0, x1, y1 in coords])
        np.testing.assert_array_equal(tissue_fraction(mask, coords), expected)


def test_reading_on_threads_keeps_the_size_guard(tmp_path: Path, monkeypatch) -> None:
    """PIL's decompression-bomb guard is one process-wide value; photos are read on several
    threads, each raising it for its own open: no read may see another's restored value, and
    the value is PIL's own again afterwards."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mil_cyto.data import images

    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64), "white").save(path)  # 4,096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # PIL alone refuses > 2,000
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)
    real_open = Image.open

    def slow_open(*args, **kwargs):  # widens the window between raising and opening
        time.sleep(0.02)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: images.load_rgb(path).shape, range(12)))
    assert shapes == [(64, 64, 3)] * 12
    assert Image.MAX_IMAGE_PIXELS == 1_000
