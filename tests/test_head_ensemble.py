"""Several heads fitted apart, evaluated as one (``--heads``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mil_cyto.checkpoint import build_model, load_model, model_recipe, save_model, state_equal
from mil_cyto.encoders import EncoderSpec
from mil_cyto.errors import MilCytoError
from mil_cyto.models import HeadEnsemble, create_aggregator


def _heads(n: int, **kwargs: object) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [create_aggregator("gated_abmil", in_dim=8, **kwargs).eval() for _ in range(n)]


def test_mean_of_the_members() -> None:
    heads = _heads(3, instance_attention=True, attention_threshold=1, bag_norm=True)
    ensemble = HeadEnsemble(heads).eval()
    x = torch.randn(2, 7, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False  # a padded bag
    with torch.no_grad():
        out = ensemble(x, mask)
        members = [h(x, mask) for h in heads]
    probs = torch.stack([torch.softmax(m.logits, -1) for m in members]).mean(0)
    torch.testing.assert_close(torch.softmax(out.logits, -1), probs)
    torch.testing.assert_close(out.attention, torch.stack([m.attention for m in members]).mean(0))
    torch.testing.assert_close(out.attention.sum(1), torch.ones(2))
    assert torch.all(out.attention[1, 5:] == 0)
    torch.testing.assert_close(out.scores, torch.stack([m.scores for m in members]).mean(0))
    instance = torch.stack([m.instance_logits for m in members]).mean(0)
    torch.testing.assert_close(out.instance_logits, instance)
    assert out.mask is mask
    # members that differ give an ensemble unlike any of them
    assert not torch.allclose(out.logits, members[0].logits)


def test_members_without_instance_head_give_none() -> None:
    ensemble = HeadEnsemble(_heads(2, instance_head=False)).eval()
    with torch.no_grad():
        assert ensemble(torch.randn(1, 4, 8)).instance_logits is None


def test_one_member_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        HeadEnsemble(_heads(1))


def _recipe(members: int) -> dict:
    return model_recipe(
        EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 12}),
        "gated_abmil",
        {"hidden_dim": 16, "attention_dim": 8},
        in_dim=12,
        tiling={"tile_size": 32, "stride": 32, "min_tissue": 0.05},
        members=members,
    )


def test_ensemble_round_trips_through_the_run_folder(tmp_path: Path) -> None:
    assert "members" not in _recipe(1)["aggregator"]  # one head: the recipe of old
    torch.manual_seed(0)
    model = build_model(_recipe(3)).eval()
    assert isinstance(model.aggregator, HeadEnsemble) and len(model.aggregator.members) == 3
    save_model(tmp_path, model, _recipe(3))
    loaded, recipe = load_model(tmp_path)
    assert recipe["aggregator"]["members"] == 3
    assert state_equal(model, loaded)
    tiles = [torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)]
    with torch.no_grad():
        assert torch.equal(model.forward_tiles(tiles).logits, loaded.forward_tiles(tiles).logits)


def test_ensemble_weights_under_a_one_head_recipe_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_model(tmp_path, build_model(_recipe(2)), _recipe(1))
    with pytest.raises(MilCytoError, match="does not match the architecture"):
        load_model(tmp_path)
