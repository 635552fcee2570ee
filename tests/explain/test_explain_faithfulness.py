"""explain.faithfulness: deletion / insertion over tiles against random orders."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from explain.faithfulness import faithfulness, tile_curves
from mil_cyto.models import MILModel, MILOutput


class MaxOfFirstFeature(nn.Module):
    """Class 1 logit = 10 x the largest first feature over real tiles - 5 (one tile decides)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        v = x[..., 0] if mask is None else x[..., 0].masked_fill(~mask, -1e9)
        top = v.max(dim=1).values
        logits = torch.stack([torch.zeros_like(top), 10 * top - 5], dim=1)
        att = torch.softmax(v, dim=1)
        return MILOutput(logits, att, v)


def test_ranking_the_deciding_tile_first_beats_random() -> None:
    model = MILModel(None, MaxOfFirstFeature())
    feats = torch.zeros(20, 3)
    feats[7, 0] = 1.0  # the one suspect tile
    scores = np.zeros(20)
    scores[7] = 5.0
    out = faithfulness(model, feats, scores, target=1)
    assert out["deletion_auc"] < out["random_deletion_auc"] - 0.2
    assert out["insertion_auc"] > out["random_insertion_auc"] + 0.2
    worst = faithfulness(model, feats, -scores, target=1)
    assert worst["deletion_auc"] > out["deletion_auc"]


def test_curves_start_and_end_at_the_full_bag() -> None:
    model = MILModel(None, MaxOfFirstFeature())
    feats = torch.randn(9, 2)
    full = torch.softmax(model.aggregator(feats[None]).logits, 1)[0, 1].item()
    curves = tile_curves(model, feats, np.arange(9), 1, n_points=11)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and len(curves.deletion) == 11
    assert abs(curves.deletion[0] - full) < 1e-6 and abs(curves.insertion[-1] - full) < 1e-6
    assert 0 <= curves.deletion_auc <= 1 and 0 <= curves.insertion_auc <= 1
