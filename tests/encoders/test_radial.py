"""The radial optical-density profile beside the CNN's features (mil_cyto.encoders.radial)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.encoders.radial import RadialProfile, ring_weights

T = 64


def _cell(nucleus: float, halo: float | None = None, grey: int = 150) -> torch.Tensor:
    """A ``(1, 3, T, T)`` uint8 crop: a dark nucleus of radius ``nucleus`` px at the centre,
    optionally a clear (white) halo out to ``halo`` px, in grey cytoplasm."""
    yy, xx = np.mgrid[:T, :T] + 0.5 - T / 2
    radius = np.hypot(yy, xx)
    image = np.full((T, T), grey, dtype=np.uint8)
    if halo is not None:
        image[radius < halo] = 250
    image[radius < nucleus] = 30
    return torch.from_numpy(np.repeat(image[None, None], 3, axis=1))


def test_rings_partition_the_tile() -> None:
    weights = ring_weights(T, 16)
    assert weights.shape == (16, T * T)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(16))
    assert ((weights > 0).sum(dim=0) == 1).all()  # every pixel in exactly one ring


def test_profile_sees_nucleus_size_and_a_perinuclear_halo() -> None:
    profile = RadialProfile(16)
    small, large = profile(_cell(5)), profile(_cell(12))
    assert small.shape == (1, 96)
    mean = lambda p: p.reshape(3, 2, 16)[0, 0]  # noqa: E731  channel 0's ring means
    # a larger nucleus: dark (high optical density) further out
    assert mean(large)[4] > mean(small)[4] + 1.0
    # a halo: a clear ring (low density) between the nucleus and the cytoplasm
    koilocyte = mean(profile(_cell(8, halo=16)))
    assert koilocyte[5] < koilocyte[0] and koilocyte[5] < koilocyte[12]
    assert koilocyte[5] < mean(profile(_cell(8)))[5]


def test_profile_ignores_orientation_and_input_scale() -> None:
    rng = np.random.default_rng(0)
    tiles = torch.from_numpy(rng.integers(0, 256, (4, 3, T, T), dtype=np.uint8))
    profile = RadialProfile(16)
    reference = profile(tiles)
    torch.testing.assert_close(profile(torch.rot90(tiles, 1, dims=(2, 3))), reference)
    torch.testing.assert_close(profile(tiles.flip(3)), reference)
    torch.testing.assert_close(profile(tiles.float() / 255.0), reference, rtol=1e-5, atol=1e-5)


def test_profile_is_differentiable_in_the_pixels() -> None:
    """Also after a forward under inference mode (the review app predicts, then attributes)."""
    profile = RadialProfile(16)
    with torch.inference_mode():
        profile(_cell(8))
    tiles = (_cell(8, halo=16).float() / 255.0).requires_grad_(True)
    profile(tiles).sum().backward()
    assert tiles.grad is not None and torch.isfinite(tiles.grad).all()
    assert tiles.grad.abs().sum() > 0


def test_encoder_appends_the_profile_to_its_learned_features() -> None:
    torch.manual_seed(0)
    plain = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8}))
    torch.manual_seed(0)
    radial = create_encoder(
        EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 8, "radial_rings": 4})
    )
    assert (radial.backbone_dim, radial.out_dim) == (8, 8 + 24)
    tiles = _cell(8, halo=16).repeat(2, 1, 1, 1)
    with torch.no_grad():
        features = radial.eval()(tiles)
        torch.testing.assert_close(features[:, :8], plain.eval()(tiles))
        torch.testing.assert_close(features[:, :8], radial.learned(tiles))
        torch.testing.assert_close(features[:, 8:], RadialProfile(4)(tiles))
    with pytest.raises(ValueError, match="square"):
        RadialProfile(4)(torch.zeros(1, 3, 8, 16))
