"""explain.maps: normalisation, tile and pixel heatmaps, storage, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explain.maps import downsample, normalise, pixel_heatmap, save_overlay, tile_heatmap
from mil_cyto.errors import MilCytoError


def test_normalise_rank_minmax_none_keep_nan() -> None:
    v = np.array([3.0, 1.0, 2.0, np.nan])
    np.testing.assert_allclose(normalise(v, "rank"), [1.0, 0.0, 0.5, np.nan])
    np.testing.assert_allclose(normalise(v * 10, "minmax"), [1.0, 0.0, 0.5, np.nan])
    np.testing.assert_allclose(normalise(v, "none"), v)
    assert normalise(v, "rank").dtype == np.float32
    np.testing.assert_allclose(normalise(np.ones(3), "minmax"), 0.0)  # flat map, no NaN
    with pytest.raises(MilCytoError, match="normalisation"):
        normalise(v, "softmax")


def test_tile_heatmap_averages_overlap_and_leaves_glass_nan() -> None:
    coords = np.array([[0, 0, 4, 4], [2, 0, 6, 4]])
    heat = tile_heatmap((5, 8), coords, np.array([0.0, 1.0]))
    assert heat.shape == (5, 8) and heat.dtype == np.float32
    assert heat[0, 0] == 0.0 and heat[0, 5] == 1.0 and heat[0, 3] == 0.5
    assert np.isnan(heat[4]).all() and np.isnan(heat[:, 6:]).all()
    ranked = tile_heatmap((5, 8), coords, np.array([-7.0, 40.0]), how="rank")
    assert ranked[0, 0] == 0.0 and ranked[0, 5] == 1.0


def test_pixel_heatmap_places_each_tile_map_at_its_box() -> None:
    coords = np.array([[0, 0, 2, 2], [2, 2, 4, 4]])
    maps = np.stack([np.arange(4.0).reshape(2, 2), -np.ones((2, 2))])
    heat = pixel_heatmap((4, 4), coords, maps)
    np.testing.assert_array_equal(heat[:2, :2], maps[0])
    np.testing.assert_array_equal(heat[2:, 2:], maps[1])
    assert np.isnan(heat[0, 3])


def test_downsample_block_mean_ignores_nan() -> None:
    heat = np.full((4, 6), np.nan)
    heat[:2, :2] = [[1.0, 3.0], [np.nan, 2.0]]
    small = downsample(heat, 2)
    assert small.shape == (2, 3) and small.dtype == np.float16
    assert small[0, 0] == 2.0 and np.isnan(small[1, 2])


def test_save_overlay_writes_a_png(tmp_path: Path, blob_photo) -> None:
    photo = blob_photo()
    heat = np.random.default_rng(0).normal(size=photo.shape[:2])
    out = tmp_path / "o" / "overlay.png"
    save_overlay(
        out,
        photo,
        [("a", heat, np.array([[10, 10, 20, 20]])), ("b", heat, None)],
        np.array([[30, 30, 50, 50]]),
        title="t",
    )
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 100
