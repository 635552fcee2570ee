"""DSMIL (Li, Li and Eliceiri, CVPR 2021): a dual-stream aggregator for C classes.

Stream 1, max pooling: a per-tile classifier ``(B, N, C)``; its per-class maximum is the
"critical instance" and a bag prediction of its own. Stream 2, attention: each tile's query
is compared to the critical instance's query of each class,
``A[:, c] = softmax_i(<q_i, q_crit(c)> / sqrt(d))``, and the class-wise pooled values
``(C, V)`` go through a 1-D convolution over classes to the bag logits. The training loss
adds the max stream's cross-entropy (:meth:`auxiliary_loss`), as in the paper (there BCE,
here the 3-way softmax cross-entropy).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mil_cyto.models.aggregators import AGGREGATORS, MILOutput, standardise_within_bag
from mil_cyto.models.base import Aggregator
from mil_cyto.models.common import (
    abnormal_log_odds,
    full_mask,
    masked_max,
    masked_softmax,
    tile_projection,
)


class DSMIL(Aggregator):
    """``attention``: the class-wise attention mixed by the predicted class probabilities
    (sums to 1); ``scores``: each tile's log odds of "not normal" from the instance stream,
    comparable across photos."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        query_dim: int = 64,
        dropout: float = 0.1,
        max_weight: float = 0.5,
        bag_norm: bool = False,
    ) -> None:
        super().__init__()
        self.bag_norm = bag_norm
        self.max_weight = max_weight
        self.project = tile_projection(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        self.query = nn.Sequential(nn.Linear(hidden_dim, query_dim), nn.Tanh())
        self.value = nn.Linear(hidden_dim, hidden_dim)
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=hidden_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = full_mask(x, mask)
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        h = self.project(x)  # (B, N, H)
        tile_logits = self.instance_classifier(h)  # (B, N, C)
        max_logits, critical = masked_max(tile_logits, m)  # (B, C), (B, C) tile index
        q = self.query(h)  # (B, N, Q)
        q_crit = torch.gather(q, 1, critical[..., None].expand(-1, -1, q.shape[-1]))  # (B, C, Q)
        sim = torch.bmm(q_crit, q.transpose(1, 2)) / math.sqrt(q.shape[-1])  # (B, C, N)
        attn = masked_softmax(sim, m[:, None, :])  # (B, C, N)
        pooled = torch.bmm(attn, self.value(h))  # (B, C, H)
        logits = self.bag_classifier(pooled).squeeze(-1)  # (B, C)
        probs = torch.softmax(logits.detach(), dim=1)[:, :, None]
        attention = (probs * attn).sum(dim=1)
        scores = abnormal_log_odds(tile_logits).masked_fill(~m, 0.0)
        extras = {"max_logits": max_logits, "tile_logits": tile_logits}
        return MILOutput(logits, attention, scores, None, mask, extras)

    def auxiliary_loss(self, out: MILOutput, target: torch.Tensor) -> torch.Tensor:
        """``max_weight`` x the max stream's cross-entropy against the bag grade."""
        assert out.extras is not None
        return self.max_weight * F.cross_entropy(out.extras["max_logits"].float(), target)


@AGGREGATORS.register("dsmil")
def _dsmil(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return DSMIL(in_dim, n_classes, **kwargs)
