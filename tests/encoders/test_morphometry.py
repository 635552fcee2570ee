"""Nucleus morphometry and texture (mil_cyto.encoders.morphometry) on drawn cells of known
size and shape, alone and beside a CNN, through the frozen-extraction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.encoders.morphometry import COLOUR_FEATURES, FEATURE_NAMES, Morphometry
from mil_cyto.errors import MilCytoError
from mil_cyto.features.extraction import EncoderRunner
from mil_cyto.pretrain import PretrainConfig, pretrain_encoder

T = 96


def _cell(
    a: float, b: float | None = None, *, cytoplasm: float = 30.0, seed: int = 0
) -> np.ndarray:
    """A ``(T, T, 3)`` uint8 crop: a dark purple elliptic nucleus with semi-axes ``a`` (along
    x) and ``b`` (along y; default ``a``: a disc) at the centre, in a paler cytoplasm disc of
    radius ``cytoplasm`` px, on near-white glass, with a little noise."""
    b = a if b is None else b
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:T, :T] - (T - 1) / 2
    image = np.empty((T, T, 3), dtype=np.float64)
    image[:] = (235, 238, 240)
    image[np.hypot(yy, xx) <= cytoplasm] = (170, 190, 215)
    image[(xx / a) ** 2 + (yy / b) ** 2 <= 1] = (70, 40, 110)
    image += rng.normal(0, 2, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _tiles(*cells: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(cells)).permute(0, 3, 1, 2).contiguous()


def _column(features: torch.Tensor, name: str, names: tuple[str, ...] = FEATURE_NAMES):
    return features[:, names.index(name)].numpy()


@pytest.mark.parametrize("radius", [8.0, 14.0, 20.0])
def test_disc_area_and_roundness(radius: float) -> None:
    features = Morphometry()(_tiles(_cell(radius)))
    assert features.shape == (1, len(FEATURE_NAMES))
    assert _column(features, "nuc_found")[0] == 1
    area = _column(features, "nuc_area")[0]
    assert area == pytest.approx(np.pi * radius**2, rel=0.08)
    assert _column(features, "nuc_eccentricity")[0] < 0.3
    assert _column(features, "nuc_solidity")[0] > 0.9
    assert _column(features, "nuc_centre_offset")[0] < 1.5
    cell_area = np.pi * 30.0**2
    assert _column(features, "nc_ratio")[0] == pytest.approx(area / cell_area, rel=0.1)


def test_ellipse_eccentricity_and_axes() -> None:
    a, b = 18.0, 9.0
    features = Morphometry()(_tiles(_cell(a, b)))
    expected = np.sqrt(1 - (b / a) ** 2)  # 0.866
    assert _column(features, "nuc_eccentricity")[0] == pytest.approx(expected, abs=0.03)
    assert _column(features, "nuc_major_axis")[0] == pytest.approx(2 * a, rel=0.06)
    assert _column(features, "nuc_minor_axis")[0] == pytest.approx(2 * b, rel=0.1)


def test_pixel_size_scales_areas_and_lengths_only() -> None:
    tiles = _tiles(_cell(12.0))
    px, um = Morphometry()(tiles), Morphometry(um_per_px=0.25)(tiles)
    for name, power in [
        ("nuc_area", 2),
        ("cell_area", 2),
        ("nuc_perimeter", 1),
        ("nuc_od_integrated", 2),
    ]:
        assert _column(um, name)[0] == pytest.approx(_column(px, name)[0] * 0.25**power, rel=1e-5)
    for name in ("nuc_eccentricity", "nc_ratio", "nuc_od_mean", "glcm_contrast", "lbp_3"):
        assert _column(um, name)[0] == pytest.approx(_column(px, name)[0], rel=1e-6)
    with pytest.raises(MilCytoError, match="um_per_px"):
        Morphometry(um_per_px=0)


def test_darker_larger_nucleus_and_no_nucleus() -> None:
    features = Morphometry()(_tiles(_cell(8.0), _cell(16.0), np.full((T, T, 3), 235, np.uint8)))
    area = _column(features, "nuc_area")
    assert area[1] > 3 * area[0]
    assert _column(features, "nuc_od_integrated")[1] > 3 * _column(features, "nuc_od_integrated")[0]
    assert _column(features, "nuc_found").tolist() == [1, 1, 0]  # a blank crop: no nucleus
    assert np.isfinite(features.numpy()).all()


def test_float_tiles_and_colour_switch() -> None:
    cells = _tiles(_cell(10.0), _cell(15.0, 10.0))
    as_uint8 = Morphometry()(cells)
    torch.testing.assert_close(Morphometry()(cells.float() / 255.0), as_uint8)
    plain = Morphometry(colour=False)
    features = plain(cells)
    assert features.shape == (2, len(FEATURE_NAMES) - len(COLOUR_FEATURES))
    assert not set(plain.names) & set(COLOUR_FEATURES)
    keep = [FEATURE_NAMES.index(n) for n in plain.names]
    torch.testing.assert_close(features, as_uint8[:, keep])
    assert Morphometry()(torch.zeros(0, 3, T, T, dtype=torch.uint8)).shape == (
        0,
        len(FEATURE_NAMES),
    )


def test_registered_encoder_is_frozen_and_says_so() -> None:
    encoder = create_encoder("morphometry")
    assert encoder.out_dim == len(FEATURE_NAMES) and not encoder.trainable
    assert not list(encoder.parameters())
    tiles = _tiles(_cell(10.0), _cell(14.0))
    torch.testing.assert_close(encoder(tiles), Morphometry()(tiles))
    with pytest.raises(MilCytoError, match="--pretrain none --refine-epochs 0"):
        pretrain_encoder(
            encoder, tiles, PretrainConfig(epochs=1, batch_size=2), torch.device("cpu")
        )
    with pytest.raises(MilCytoError, match="trains from scratch"):
        create_encoder(EncoderSpec("morphometry", weights="w.safetensors"))
    microns = create_encoder(EncoderSpec("morphometry", kwargs={"um_per_px": 0.5, "colour": False}))
    assert microns.out_dim == len(FEATURE_NAMES) - len(COLOUR_FEATURES)


def test_beside_a_cnn_and_the_radial_profile() -> None:
    spec = EncoderSpec("smallcnn", kwargs={"morphometry": True, "radial_rings": 4})
    encoder = create_encoder(spec).eval()
    assert encoder.trainable and encoder.backbone_dim == 128
    assert encoder.out_dim == 128 + 24 + len(FEATURE_NAMES)
    tiles = _tiles(_cell(10.0), _cell(14.0))
    with torch.no_grad():
        features = encoder(tiles)
    assert features.shape == (2, encoder.out_dim)
    torch.testing.assert_close(features[:, 128 + 24 :], Morphometry()(tiles))
    with pytest.raises(MilCytoError, match="morphometry"):
        create_encoder(EncoderSpec("smallcnn", kwargs={"morphometry": {"pixels": 2}}))


@pytest.mark.parametrize("compile_mode", ["off", "auto"])
def test_frozen_extraction_path(compile_mode: str) -> None:
    """The features path of frozen mode (EncoderRunner: inference mode, optional compile)."""
    encoder = create_encoder(EncoderSpec("morphometry", kwargs={"radial_rings": 4}))
    tiles = _tiles(_cell(10.0), _cell(14.0), _cell(6.0))
    runner = EncoderRunner(encoder, "cpu", compile=compile_mode)
    out = runner(tiles)
    assert out.shape == (3, 24 + len(FEATURE_NAMES)) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 24:], Morphometry()(tiles))


def test_model_with_morphometry_saves_and_loads(tmp_path) -> None:
    """A MIL model on morphometry beside the CNN round-trips through model.json."""
    from mil_cyto.checkpoint import build_model, load_model, model_recipe, save_model

    spec = EncoderSpec("smallcnn", kwargs={"width": 8, "out_dim": 16, "morphometry": True})
    in_dim = 16 + len(FEATURE_NAMES)
    recipe = model_recipe(spec, "abmil", {}, in_dim, {"tile_size": T})
    model = build_model(recipe).eval()
    save_model(tmp_path, model, recipe)
    loaded, _ = load_model(tmp_path)
    tiles = _tiles(_cell(10.0), _cell(14.0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(tiles), model.encoder(tiles))
