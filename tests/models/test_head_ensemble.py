"""Several heads fitted apart, evaluated as one (``--heads``); saving and reloading one:
tests/test_checkpoint.py."""

from __future__ import annotations

import pytest
import torch

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
