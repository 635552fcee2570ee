"""explain.attributions: Captum through the whole MIL model, pixel and tile level."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion

from explain.attributions import (
    AggregatorLogits,
    AttributionSettings,
    BagLogits,
    attribute_photo,
    attribute_tiles,
    find_layer,
    list_methods,
    photo_input,
)
from mil_cyto.checkpoint import build_model, model_recipe
from mil_cyto.encoders import EncoderSpec
from mil_cyto.errors import MilCytoError
from mil_cyto.models import MILModel

T = 16


@pytest.fixture(scope="module")
def model() -> MILModel:
    torch.manual_seed(0)
    spec = EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8, "stem_pool": 1})
    return build_model(model_recipe(spec, "gated_abmil", {"bag_norm": True}, 8, {})).eval()


@pytest.fixture(scope="module")
def photo() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tiles = rng.integers(60, 250, size=(5, 3, T, T), dtype=np.uint8)
    coords = np.array(
        [
            [0, 0, T, T],
            [T, 0, 2 * T, T],
            [2 * T, 0, 3 * T, T],
            [0, T, T, 2 * T],
            [8, 8, 8 + T, 8 + T],
        ]
    )  # the last overlaps
    return tiles, coords


def test_every_method_gives_a_map_and_tile_scores(model, photo) -> None:
    tiles, coords = photo
    settings = AttributionSettings(n_steps=4, n_samples=2, occlusion_window=8, occlusion_stride=8)
    assert {
        "attention",
        "integrated_gradients",
        "saliency",
        "gradient_shap",
        "occlusion",
        "layer_gradcam",
        "instance_head",
    } <= set(list_methods())
    for method in list_methods():
        pixel_map, scores = attribute_photo(
            model, tiles, coords, method, 2, size_hw=(40, 50), settings=settings
        )
        assert pixel_map.shape == (40, 50) and pixel_map.dtype == np.float32, method
        assert scores.shape == (5,) and np.isfinite(scores).all(), method
        assert np.isfinite(pixel_map[:T, :T]).all() and np.isnan(pixel_map[35:, 45:]).all()


def test_integrated_gradients_are_complete_through_the_whole_model(model, photo) -> None:
    """IG's attributions sum to logit(photo) - logit(white glass) (pixels) and
    logit(embeddings) - logit(zeros) (tiles): the path really runs through the MIL model."""
    tiles, _ = photo
    prepared = photo_input(model, tiles)
    result = attribute_tiles(
        model, prepared, "integrated_gradients", 1, AttributionSettings(n_steps=128)
    )
    with torch.no_grad():
        bag = BagLogits(model, 64)
        gap = bag(prepared.tiles[None])[0, 1] - bag(torch.ones_like(prepared.tiles)[None])[0, 1]
        agg = AggregatorLogits(model)
        feats = prepared.features[None]
        tile_gap = agg(feats)[0, 1] - agg(torch.zeros_like(feats))[0, 1]
    assert abs(result.pixel.sum() - float(gap)) < 0.05 * abs(float(gap)) + 1e-3
    assert abs(result.tile.sum() - float(tile_gap)) < 0.02 * abs(float(tile_gap)) + 1e-3


def test_tile_by_tile_occlusion_equals_occluding_the_whole_stack(model, photo) -> None:
    tiles, _ = photo
    prepared = photo_input(model, tiles)
    settings = AttributionSettings(occlusion_window=8, occlusion_stride=8)
    fast = attribute_tiles(model, prepared, "occlusion", 2, settings).pixel
    with torch.no_grad():
        joint = (
            Occlusion(BagLogits(model, 64))
            .attribute(
                prepared.tiles[None],
                sliding_window_shapes=(1, 3, 8, 8),
                strides=(1, 3, 8, 8),
                baselines=1.0,
                target=2,
            )[0]
            .mean(1)
        )
    np.testing.assert_allclose(fast, joint.numpy(), atol=1e-5)


def test_attention_method_is_attention_times_bag_size(model, photo) -> None:
    tiles, coords = photo
    _, scores = attribute_photo(model, tiles, coords, "attention", 0)
    with torch.no_grad():
        out = model.aggregator(model.encode(torch.from_numpy(tiles))[None])
    np.testing.assert_allclose(scores, out.attention[0].numpy() * 5, rtol=1e-5)
    assert abs(scores.mean() - 1.0) < 1e-5


def test_instance_head_maps_the_target_threshold_and_ranks_by_the_first(model, photo) -> None:
    """The map is the target's ordinal logit ("grade >= CIN2+" for target 2); detections are
    ranked across photos by "grade >= CIN1", the same threshold for every photo."""
    tiles, _ = photo
    prepared = photo_input(model, tiles)
    with torch.no_grad():
        logits = model.aggregator(prepared.features[None]).instance_logits[0].numpy()
    for target, column in ((0, 0), (1, 0), (2, 1)):
        result = attribute_tiles(model, prepared, "instance_head", target)
        np.testing.assert_allclose(result.tile, logits[:, column], rtol=1e-6)
        np.testing.assert_allclose(result.across_photos, logits[:, 0], rtol=1e-6)


def test_gradcam_reads_the_last_conv_layer(model) -> None:
    convs = [m for m in model.encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert find_layer(model.encoder) is convs[-1]
    with pytest.raises(MilCytoError, match="not in the backbone"):
        find_layer(model.encoder, "no.such.layer")


def test_clear_errors(model, photo) -> None:
    tiles, coords = photo
    with pytest.raises(MilCytoError, match="unknown attribution method"):
        attribute_photo(model, tiles, coords, "lime", 1)
    with pytest.raises(MilCytoError, match="out of range"):
        attribute_photo(model, tiles, coords, "saliency", 3)
    with pytest.raises(MilCytoError, match="one box per tile"):
        attribute_photo(model, tiles, coords[:2], "saliency", 1)
    features_only = MILModel(None, model.aggregator)
    feats = model.encode(torch.from_numpy(tiles)).detach()
    prepared = photo_input(features_only, None, feats)
    assert attribute_tiles(features_only, prepared, "attention", 1).pixel is None
    with pytest.raises(MilCytoError, match="no tile encoder"):
        attribute_tiles(features_only, prepared, "integrated_gradients", 1)
