"""The chunked attention-MIL head gives the plain head's outputs on one large bag."""

from __future__ import annotations

import pytest
import torch

from mil_cyto.models import create_aggregator
from mil_cyto.models.streaming import attend_in_chunks


@pytest.mark.parametrize(
    "name, bag_norm, instance_attention, threshold",
    [
        ("abmil", False, False, None),
        ("gated_abmil", True, False, None),
        ("gated_abmil", True, True, None),
        ("gated_abmil", True, True, 1),
    ],
)
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_head_matches_plain_head(
    name: str, bag_norm: bool, instance_attention: bool, threshold: int | None, chunk: int
) -> None:
    torch.manual_seed(0)
    head = create_aggregator(
        name,
        in_dim=12,
        bag_norm=bag_norm,
        instance_attention=instance_attention,
        attention_threshold=threshold,
    ).eval()
    x = torch.randn(300, 12) * 3 + 1
    with torch.no_grad():
        plain = head(x[None])
    out = attend_in_chunks(head, x, chunk=chunk)
    torch.testing.assert_close(out.logits, plain.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.attention, plain.attention, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.scores, plain.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.instance_logits, plain.instance_logits, rtol=1e-4, atol=1e-5)


def test_chunked_head_refuses_training_mode() -> None:
    head = create_aggregator("abmil", in_dim=4).train()
    with pytest.raises(ValueError, match="eval"):
        attend_in_chunks(head, torch.randn(5, 4))
