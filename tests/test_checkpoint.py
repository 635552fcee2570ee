"""Trained models on disk: safetensors + JSON recipe, nothing ever unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mil_cyto.checkpoint import (
    FORMAT,
    build_model,
    load_model,
    model_recipe,
    save_model,
    state_equal,
)
from mil_cyto.encoders import EncoderSpec
from mil_cyto.errors import MilCytoError
from mil_cyto.models import HeadEnsemble, MILModel


def _recipe(width: int = 4, members: int = 1) -> dict[str, Any]:
    return model_recipe(
        EncoderSpec("smallcnn", kwargs={"width": width, "out_dim": 12}),
        "gated_abmil",
        {"hidden_dim": 16, "attention_dim": 8},
        in_dim=12,
        tiling={"tile_size": 32, "stride": 32, "min_tissue": 0.05},
        members=members,
    )


def _trained_like_model(seed: int = 0) -> MILModel:
    torch.manual_seed(seed)
    model = build_model(_recipe())
    # move BatchNorm statistics off their defaults so buffers are checked too
    model.train()
    with torch.no_grad():
        model.encode(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8))
    return model.eval()


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, MILModel]:
    model = _trained_like_model()
    run = tmp_path / "run"
    save_model(run, model, _recipe())
    return run, model


def test_round_trip(saved: tuple[Path, MILModel]) -> None:
    run, model = saved
    assert sorted(p.name for p in run.iterdir()) == ["model.json", "model.safetensors"]
    loaded, recipe = load_model(run)
    assert recipe == _recipe()
    assert recipe["format"] == FORMAT
    assert state_equal(model, loaded)
    assert not loaded.training
    tiles = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8) for n in (3, 2)]
    with torch.no_grad():
        a, b = model.forward_tiles(tiles), loaded.forward_tiles(tiles)
    assert torch.equal(a.logits, b.logits)


def test_state_equal_detects_a_difference(saved: tuple[Path, MILModel]) -> None:
    _, model = saved
    other = _trained_like_model(seed=1)
    assert not state_equal(model, other)
    clone = _trained_like_model(seed=0)
    assert state_equal(model, clone)
    with torch.no_grad():
        clone.aggregator.classifier.bias[0] += 1e-6
    assert not state_equal(model, clone)


@pytest.mark.parametrize("missing", ["model.json", "model.safetensors"])
def test_missing_files(saved: tuple[Path, MILModel], missing: str) -> None:
    run, _ = saved
    (run / missing).unlink()
    with pytest.raises(MilCytoError, match=missing):
        load_model(run)


def test_missing_run_folder(tmp_path: Path) -> None:
    with pytest.raises(MilCytoError, match="not found"):
        load_model(tmp_path / "never-trained")


def test_weights_that_do_not_fit_the_recipe(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    recipe = json.loads((run / "model.json").read_text())
    recipe["encoder"]["kwargs"]["width"] = 8  # someone edited the recipe
    (run / "model.json").write_text(json.dumps(recipe))
    with pytest.raises(MilCytoError) as info:
        load_model(run)
    message = str(info.value)
    assert str(run / "model.safetensors") in message and "model.json" in message


def test_weights_of_another_aggregator(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    recipe = json.loads((run / "model.json").read_text())
    recipe["aggregator"]["name"] = "abmil"  # the gated weights have an extra attention_u
    (run / "model.json").write_text(json.dumps(recipe))
    with pytest.raises(MilCytoError, match="model.safetensors"):
        load_model(run)


def test_bad_json_recipe(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    (run / "model.json").write_text("{not json")
    with pytest.raises(MilCytoError, match="model.json"):
        load_model(run)


def test_foreign_format(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    recipe = json.loads((run / "model.json").read_text())
    recipe["format"] = "someone-else/3"
    (run / "model.json").write_text(json.dumps(recipe))
    with pytest.raises(MilCytoError, match="someone-else/3"):
        load_model(run)


def test_recipe_missing_a_section(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    recipe = json.loads((run / "model.json").read_text())
    del recipe["aggregator"]
    (run / "model.json").write_text(json.dumps(recipe))
    with pytest.raises(MilCytoError, match="model.json"):
        load_model(run)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None])
def test_unreadable_weights(saved: tuple[Path, MILModel], content: bytes | None) -> None:
    run, _ = saved
    weights = run / "model.safetensors"
    if content is None:  # truncated real file
        content = weights.read_bytes()[: weights.stat().st_size // 2]
    weights.write_bytes(content)
    with pytest.raises(MilCytoError, match="model.safetensors"):
        load_model(run)


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_crafted_pickle_is_never_executed(saved: tuple[Path, MILModel], tmp_path: Path) -> None:
    run, model = saved
    marker = tmp_path / "pwned"
    evil_state = {k: v for k, v in model.state_dict().items()}
    evil_state["aggregator.classifier.bias"] = _Payload(marker)  # type: ignore[assignment]
    torch.save(evil_state, run / "model.safetensors")  # a .pth-style zip pickle
    with pytest.raises(MilCytoError, match="model.safetensors"):
        load_model(run)
    assert not marker.exists()
    # torch's own safe loader refuses it as well, under either file name
    copy = tmp_path / "copy.pth"
    shutil.copy(run / "model.safetensors", copy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(copy, weights_only=True)
    with pytest.raises(Exception):  # noqa: B017 - torch may route *.safetensors elsewhere
        torch.load(run / "model.safetensors", weights_only=True)
    assert not marker.exists()
    # ... and the payload is live: an unsafe loader would have run it
    torch.load(copy, weights_only=False)
    assert marker.exists()


def test_save_leaves_no_temporary_files_and_overwrites(saved: tuple[Path, MILModel]) -> None:
    run, _ = saved
    other = _trained_like_model(seed=3)
    save_model(run, other, _recipe())
    assert sorted(p.name for p in run.iterdir()) == ["model.json", "model.safetensors"]
    loaded, _ = load_model(run)
    assert state_equal(other, loaded)


def test_head_ensemble_round_trips_through_the_run_folder(tmp_path: Path) -> None:
    """``--heads``: the recipe names the member count (one head: no key, the recipe of old)
    and the ensemble reloads with identical weights and outputs."""
    assert "members" not in _recipe()["aggregator"]
    torch.manual_seed(0)
    model = build_model(_recipe(members=3)).eval()
    assert isinstance(model.aggregator, HeadEnsemble) and len(model.aggregator.members) == 3
    save_model(tmp_path, model, _recipe(members=3))
    loaded, recipe = load_model(tmp_path)
    assert recipe["aggregator"]["members"] == 3
    assert state_equal(model, loaded)
    tiles = [torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)]
    with torch.no_grad():
        assert torch.equal(model.forward_tiles(tiles).logits, loaded.forward_tiles(tiles).logits)


def test_ensemble_weights_under_a_one_head_recipe_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_model(tmp_path, build_model(_recipe(members=2)), _recipe())
    with pytest.raises(MilCytoError, match="does not match the architecture"):
        load_model(tmp_path)
