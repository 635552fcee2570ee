"""Tile encoders: the small CNN, timm backbones from local weight files, and a local HF cache.

Nothing here may reach the network: the ``no_network`` fixture makes any socket connect
fail, and HF_HUB_OFFLINE is set as a second belt.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mil_cyto.encoders import EncoderSpec, TileEncoder, create_encoder, list_encoders
from mil_cyto.errors import MilCytoError

pytestmark = pytest.mark.usefixtures("no_network")

TIMM_NAME = "mobilenetv3_small_050"  # about 1.6 M parameters, builds in ~0.1 s
OTHER_NAME = "resnet18"


def _random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A full (classifier included) random checkpoint, as a training run would save it."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_backbone_holds(encoder: TileEncoder, state: dict[str, torch.Tensor]) -> None:
    loaded = encoder.backbone.state_dict()
    assert len(loaded) > 10
    assert set(loaded) <= set(state)
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------ small CNN


def test_smallcnn_output_shape_uint8() -> None:
    torch.manual_seed(0)
    encoder = create_encoder("smallcnn").eval()
    tiles = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(tiles)
    assert out.shape == (5, encoder.out_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_smallcnn_kwargs_and_float_input() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 8, "out_dim": 24})).eval()
    assert encoder.out_dim == 24
    tiles = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = encoder(tiles)
        from_float = encoder(tiles.float() / 255.0)
    assert from_uint8.shape == (3, 24)
    torch.testing.assert_close(from_uint8, from_float)


def test_smallcnn_is_registered() -> None:
    assert "smallcnn" in list_encoders()


def test_smallcnn_refuses_weight_files(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="smallcnn"):
        create_encoder(EncoderSpec("smallcnn", weights=str(tmp_path / "w.safetensors")))


@pytest.mark.parametrize("name", ["no_such_net", "resnet_9000", ""])
def test_unknown_encoder(name: str) -> None:
    with pytest.raises(MilCytoError, match="unknown encoder"):
        create_encoder(name)


def test_spec_to_dict() -> None:
    spec = EncoderSpec("resnet18", weights="/w.pth", kwargs={"drop_rate": 0.1})
    assert spec.to_dict() == {
        "name": "resnet18",
        "weights": "/w.pth",
        "cache_dir": None,
        "kwargs": {"drop_rate": 0.1},
    }


# ------------------------------------------------------------ timm, local weights


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_local_weights_are_loaded(tmp_path: Path, suffix: str) -> None:
    state = _random_state(TIMM_NAME, seed=1)
    path = _save(state, tmp_path / f"weights{suffix}")
    torch.manual_seed(99)  # the model's own random init must differ from the file
    encoder = create_encoder(EncoderSpec(TIMM_NAME, weights=str(path)))
    _assert_backbone_holds(encoder, state)
    # sanity: a randomly initialised encoder does not hold these weights
    fresh = create_encoder(TIMM_NAME)
    with pytest.raises(AssertionError):
        _assert_backbone_holds(fresh, state)


def test_timm_encoder_runs_on_uint8_tiles(tmp_path: Path) -> None:
    path = _save(_random_state(TIMM_NAME, seed=2), tmp_path / "w.safetensors")
    encoder = create_encoder(EncoderSpec(TIMM_NAME, weights=str(path))).eval()
    tiles = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(tiles)
    assert out.ndim == 2 and out.shape[0] == 4
    assert torch.isfinite(out).all()


def test_timm_out_dim_matches_the_features() -> None:
    encoder = create_encoder(TIMM_NAME).eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out.shape == (2, encoder.out_dim)


def test_resnet_out_dim_matches_the_features() -> None:
    encoder = create_encoder(OTHER_NAME).eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out.shape == (2, encoder.out_dim) == (2, 512)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="absent.safetensors"):
        create_encoder(EncoderSpec(TIMM_NAME, weights=str(tmp_path / "absent.safetensors")))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_of_another_architecture(tmp_path: Path, suffix: str) -> None:
    path = _save(_random_state(OTHER_NAME, seed=3), tmp_path / f"resnet{suffix}")
    with pytest.raises(MilCytoError, match=TIMM_NAME):
        create_encoder(EncoderSpec(TIMM_NAME, weights=str(path)))


def test_checkpoint_with_no_matching_keys(tmp_path: Path) -> None:
    path = _save(_random_state("test_vit", seed=4), tmp_path / "vit.safetensors")
    with pytest.raises(MilCytoError):
        create_encoder(EncoderSpec(TIMM_NAME, weights=str(path)))


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_pickle_weights_do_not_execute(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": _Payload(marker)}, path)
    with pytest.raises(MilCytoError, match="evil.pth"):
        create_encoder(EncoderSpec(TIMM_NAME, weights=str(path)))
    assert not marker.exists()


def test_corrupt_safetensors_weights_are_a_milcyto_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all" + bytes(64))
    with pytest.raises(MilCytoError, match=path.name):
        create_encoder(EncoderSpec(TIMM_NAME, weights=str(path)))


def test_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Proves the crafted file above really would run code if a loader trusted pickle."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"w": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------ Hugging Face cache


def _fake_hf_cache(cache: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    assert hub_id and "/" in hub_id
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(state, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_weights_from_a_local_hf_cache(tmp_path: Path) -> None:
    state = _random_state(TIMM_NAME, seed=5)
    cache = tmp_path / "hf-cache"
    _fake_hf_cache(cache, TIMM_NAME, state)
    torch.manual_seed(123)
    encoder = create_encoder(EncoderSpec(TIMM_NAME, cache_dir=str(cache)))
    _assert_backbone_holds(encoder, state)


def test_empty_hf_cache(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    with pytest.raises(MilCytoError, match="no cached weights"):
        create_encoder(EncoderSpec(TIMM_NAME, cache_dir=str(cache)))


def test_hf_cache_of_another_model_is_not_used(tmp_path: Path) -> None:
    cache = tmp_path / "hf-cache"
    _fake_hf_cache(cache, OTHER_NAME, _random_state(OTHER_NAME, seed=6))
    with pytest.raises(MilCytoError, match="no cached weights"):
        create_encoder(EncoderSpec(TIMM_NAME, cache_dir=str(cache)))
