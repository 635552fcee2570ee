"""Instance-level pooling baselines: mean and max over per-tile class logits.

Both score every tile with a small MLP (``(B, N, D)`` -> ``(B, N, C)``) and pool the tile
logits: the mean (equal to classifying the mean embedding, the linear case) or the max
per class (mi-Net). Their ``scores`` are the tile's log odds of "not normal", so they
localize through the same metrics as the attention heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mil_cyto.models.aggregators import AGGREGATORS, MILOutput, standardise_within_bag
from mil_cyto.models.base import Aggregator
from mil_cyto.models.common import (
    abnormal_log_odds,
    full_mask,
    masked_max,
    masked_mean,
    tile_projection,
)


class InstancePooling(Aggregator):
    """``tile logits = MLP(h_i)``; bag logits = mean or per-class max of them.

    ``attention`` is uniform over real tiles for ``mean``; for ``max`` it is the share of
    classes whose maximum a tile attains (sums to 1). Padding never changes the result.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        mode: str = "mean",
        bag_norm: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"mode {mode!r}: use mean or max")
        self.mode = mode
        self.bag_norm = bag_norm
        self.tile_head = nn.Sequential(
            *tile_projection(in_dim, hidden_dim, dropout), nn.Linear(hidden_dim, n_classes)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = full_mask(x, mask)
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        tile_logits = self.tile_head(x)  # (B, N, C)
        if self.mode == "mean":
            logits = masked_mean(tile_logits, m)
            attention = m.to(x.dtype) / m.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)
        else:
            logits, where = masked_max(tile_logits, m)  # (B, C), (B, C)
            hits = torch.zeros_like(tile_logits[..., 0])
            hits.scatter_add_(1, where, torch.ones_like(where, dtype=hits.dtype))
            attention = (hits / tile_logits.shape[-1]) * m.to(x.dtype)
        scores = abnormal_log_odds(tile_logits).masked_fill(~m, 0.0)
        return MILOutput(logits, attention, scores, None, mask, {"tile_logits": tile_logits})


@AGGREGATORS.register("mean")
def _mean(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return InstancePooling(in_dim, n_classes, mode="mean", **kwargs)


@AGGREGATORS.register("max")
def _max(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return InstancePooling(in_dim, n_classes, mode="max", **kwargs)
