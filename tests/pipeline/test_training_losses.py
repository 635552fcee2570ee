"""The ordinal instance loss and within-bag standardisation."""

from __future__ import annotations

import pytest
import torch

from mil_cyto.losses import ordinal_instance_loss
from mil_cyto.models import create_aggregator, pad_bags
from mil_cyto.models.aggregators import MILOutput, standardise_within_bag


def _out(instance: torch.Tensor, mask: torch.Tensor) -> MILOutput:
    b, n = mask.shape
    zeros = torch.zeros(b, n)
    return MILOutput(torch.zeros(b, 3), zeros, zeros, instance, mask)


def test_ordinal_instance_loss_follows_the_mil_assumption() -> None:
    mask = torch.tensor([[True, True, True], [True, True, False]])
    target = torch.tensor([0, 2])  # a normal photo, a CIN2+ photo with two real tiles
    low, high = -8.0, 8.0
    # right: every tile of the normal photo low; the CIN2+ photo has one tile high on both
    good = torch.full((2, 3, 2), low)
    good[1, 0] = high
    # wrong: a normal tile scores high, and the CIN2+ photo's only high tile is padding
    bad = good.clone()
    bad[0, 2, 0] = high
    bad[1, 0] = low
    bad[1, 2] = high
    assert ordinal_instance_loss(_out(good, mask), target) < 0.01
    assert ordinal_instance_loss(_out(bad, mask), target) > 1.0


def test_ordinal_instance_loss_cin1_photo_is_negative_for_cin2() -> None:
    mask = torch.ones(1, 2, dtype=torch.bool)
    logits = torch.tensor([[[8.0, -8.0], [-8.0, -8.0]]])
    assert ordinal_instance_loss(_out(logits, mask), torch.tensor([1])) < 0.01
    logits[0, 0, 1] = 8.0  # claims a CIN2+ tile in a CIN1 photo
    assert ordinal_instance_loss(_out(logits, mask), torch.tensor([1])) > 1.0


def test_standardise_within_bag_ignores_padding() -> None:
    torch.manual_seed(0)
    short, long = torch.randn(4, 5) * 3 + 2, torch.randn(9, 5)
    alone = standardise_within_bag(short[None])[0]
    padded, mask = pad_bags([short, long])
    batched = standardise_within_bag(padded, mask)[0, :4]
    torch.testing.assert_close(alone, batched)
    torch.testing.assert_close(alone.median(0).values.abs().min(), torch.tensor(0.0))


def test_standardise_within_bag_is_robust_to_a_few_outlier_tiles() -> None:
    """An atypical tile must not change how the photo's other tiles look to the head."""
    torch.manual_seed(0)
    tiles = torch.randn(1, 40, 6)
    with_outliers = tiles.clone()
    with_outliers[0, :3] += 50.0  # three far-off tiles, as atypical cells are
    plain = standardise_within_bag(tiles)[0, 3:]
    shifted = standardise_within_bag(with_outliers)[0, 3:]
    assert (plain - shifted).abs().max() < 0.75
    assert shifted.std() / plain.std() > 0.85  # a mean/variance standardisation: 0.07
    assert standardise_within_bag(with_outliers)[0, :3].abs().min() > 20


def test_propagate_loss_gives_every_tile_its_photo_label() -> None:
    mask = torch.ones(2, 4, dtype=torch.bool)
    target = torch.tensor([2, 0])
    right = torch.full((2, 4, 2), -9.0)
    right[0] = 9.0  # every tile of the CIN2+ photo is >= CIN1 and >= CIN2+
    one_tile = torch.full((2, 4, 2), -9.0)
    one_tile[0, 0] = 9.0  # enough for "max", not for "propagate"
    assert ordinal_instance_loss(_out(right, mask), target, "propagate") < 0.01
    assert ordinal_instance_loss(_out(one_tile, mask), target, "propagate") > 1.0
    assert ordinal_instance_loss(_out(one_tile, mask), target, "max") < 0.01
    with pytest.raises(ValueError, match="instance loss"):
        ordinal_instance_loss(_out(right, mask), target, "mean")


def test_instance_attention_follows_the_instance_logits() -> None:
    torch.manual_seed(2)
    agg = create_aggregator("gated_abmil", in_dim=5, instance_attention=True).eval()
    with torch.no_grad():
        out = agg(torch.randn(2, 7, 5))
    assert out.instance_logits is not None
    torch.testing.assert_close(out.scores, out.instance_logits.sum(-1))
    torch.testing.assert_close(out.attention, torch.softmax(out.scores, dim=1))
    with pytest.raises(ValueError, match="instance_head"):
        create_aggregator("abmil", in_dim=5, instance_attention=True, instance_head=False)


def test_attention_threshold_takes_one_ordinal_logit() -> None:
    """``attention_threshold=1``: the attention logit is the tile's "grade >= CIN1" logit
    alone, so a tile strong on "CIN2+" but no stronger on "atypical" gains nothing."""
    torch.manual_seed(3)
    kwargs = {"in_dim": 5, "instance_attention": True}
    summed = create_aggregator("gated_abmil", **kwargs).eval()
    first = create_aggregator("gated_abmil", attention_threshold=1, **kwargs).eval()
    first.load_state_dict(summed.state_dict())  # same weights: only the attention differs
    second = create_aggregator("gated_abmil", attention_threshold=2, **kwargs).eval()
    second.load_state_dict(summed.state_dict())
    x = torch.randn(2, 9, 5)
    with torch.no_grad():
        out_sum, out_first, out_second = summed(x), first(x), second(x)
    assert out_first.instance_logits is not None
    torch.testing.assert_close(out_first.instance_logits, out_sum.instance_logits)
    torch.testing.assert_close(out_first.scores, out_first.instance_logits[..., 0])
    torch.testing.assert_close(out_second.scores, out_first.instance_logits[..., 1])
    torch.testing.assert_close(out_first.attention, torch.softmax(out_first.scores, dim=1))
    assert not torch.allclose(out_first.attention, out_sum.attention)
    for bad in ({"attention_threshold": 3}, {"attention_threshold": 0}):
        with pytest.raises(ValueError, match="attention_threshold"):
            create_aggregator("gated_abmil", **kwargs, **bad)
    with pytest.raises(ValueError, match="attention_threshold"):
        create_aggregator("gated_abmil", in_dim=5, attention_threshold=1)  # own attention MLP


def test_bag_norm_aggregator_is_padding_invariant() -> None:
    torch.manual_seed(1)
    agg = create_aggregator("gated_abmil", in_dim=5, bag_norm=True).eval()
    short, long = torch.randn(4, 5), torch.randn(9, 5)
    with torch.no_grad():
        alone = agg(short[None])
        padded, mask = pad_bags([short, long])
        batched = agg(padded, mask)
    torch.testing.assert_close(alone.logits[0], batched.logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone.attention[0], batched.attention[0, :4], atol=1e-5, rtol=0)
