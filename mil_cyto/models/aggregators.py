"""Attention-based MIL pooling (Ilse, Tomczak and Welling, ICML 2018), plain and gated,
the aggregator registry and within-bag feature standardisation.

Every aggregator is an :class:`~mil_cyto.models.base.Aggregator` (its contract:
``forward(x, mask) -> MILOutput``, an optional ``auxiliary_loss``, ``bag_norm``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mil_cyto.models.base import Aggregator, MILOutput
from mil_cyto.models.common import tile_projection
from mil_cyto.registry import Registry

AGGREGATORS: Registry[Aggregator] = Registry("aggregator")


BAG_NORM_EPS = 1e-2  # added to the squared robust scale, so constant features stay finite
MAD_TO_SD = 1.4826  # median absolute deviation x this = standard deviation for normal data


def robust_bag_stats(
    x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = BAG_NORM_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bag and feature of ``x`` ``(B, N, D)``: the median over real tiles and a robust
    scale ``sqrt((1.4826 MAD)^2 + eps)``, each ``(B, 1, D)`` (NaN-free; padding ignored)."""
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    masked = x.masked_fill(~mask[..., None], float("nan"))
    median = masked.nanmedian(dim=1, keepdim=True).values
    mad = (masked - median).abs().nanmedian(dim=1, keepdim=True).values
    scale = torch.sqrt((MAD_TO_SD * mad) ** 2 + eps)
    return torch.nan_to_num(median), torch.nan_to_num(scale, nan=1.0)


def standardise_within_bag(
    x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = BAG_NORM_EPS
) -> torch.Tensor:
    """Each feature minus its median over the bag's real tiles, over their median absolute
    deviation (x 1.4826, a robust standard deviation): ``(B, N, D)``, zero on padding.

    A photo's stain, focus and illumination shift every tile alike; atypical cells are the
    outliers within their photo. Robust statistics hide the first (a shortcut that memorises
    patients) and keep the second: a mean and variance would be pulled by the very outliers
    that matter, shrinking every other tile of an abnormal photo, a photo-level cue the head
    learns instead of the cells (it ranked atypical tiles below the rest).
    """
    median, scale = robust_bag_stats(x, mask, eps)
    out = (x - median) / scale
    return out if mask is None else out.masked_fill(~mask[..., None], 0.0)


def standardise_features(features: np.ndarray, eps: float = BAG_NORM_EPS) -> np.ndarray:
    """:func:`standardise_within_bag` of one bag's cached features ``(N, D)`` float32, in
    NumPy: the same (lower) medians by partial sorts, several times faster than torch's
    median, for features that need no gradient (computed once per bag on frozen features)."""
    if len(features) == 0:
        return features.copy()
    k = (len(features) - 1) // 2  # torch's median is the lower middle value
    columns = np.ascontiguousarray(features.T, dtype=np.float32)  # (D, N)
    median = np.partition(columns, k, axis=1)[:, k : k + 1]
    deviation = np.abs(columns - median)
    mad = np.partition(deviation, k, axis=1)[:, k : k + 1]
    scale = np.sqrt((np.float32(MAD_TO_SD) * mad) ** 2 + np.float32(eps))
    return np.ascontiguousarray(((columns - median) / scale).T)


class AttentionMIL(Aggregator):
    """ABMIL: ``a_i = softmax_i(w^T tanh(V h_i) [* sigmoid(U h_i)])``, ``z = sum_i a_i h_i``.

    Args:
        in_dim: tile feature size D (taken from the encoder, never hard-coded).
        n_classes: output classes (3 grades).
        hidden_dim: size of the tile embedding after the input projection.
        attention_dim: size of the attention MLP.
        gated: the gated variant (tanh * sigmoid).
        dropout: dropout on the projected embeddings.
        instance_head: add a per-tile ordinal classifier ("this tile is >= CIN1", ">= CIN2+"),
            trained by an instance loss (see ``mil_cyto.losses.ordinal_instance_loss``).
        bag_norm: standardise features within each bag first (``standardise_within_bag``).
        instance_attention: the attention logits come from the tile's ordinal instance
            logits (no separate attention MLP), so the instance loss trains the attention:
            their sum, or with ``attention_threshold``, one of them.
        attention_threshold: k = the logit "grade >= k" alone is the attention logit (1 =
            atypical vs normal, which scores every atypical cell, a CIN2+ photo's koilocytes
            too, rather than mostly its highest-grade cells; docs/cin1_gap.md); None = sum.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        gated: bool = False,
        dropout: float = 0.1,
        instance_head: bool = True,
        bag_norm: bool = False,
        instance_attention: bool = False,
        attention_threshold: int | None = None,
    ) -> None:
        super().__init__()
        if instance_attention and not instance_head:
            raise ValueError("instance_attention needs instance_head=True")
        if attention_threshold is not None and not (
            instance_attention and 1 <= attention_threshold < n_classes
        ):
            raise ValueError(
                f"attention_threshold {attention_threshold}: needs instance_attention and a "
                f"threshold in 1..{n_classes - 1}"
            )
        self.bag_norm = bag_norm
        self.attention_threshold = attention_threshold
        self.instance_attention = instance_attention
        self.project = tile_projection(in_dim, hidden_dim, dropout)
        own_attention = not instance_attention  # else the instance head scores the tiles
        self.attention_v = nn.Linear(hidden_dim, attention_dim) if own_attention else None
        self.attention_u = nn.Linear(hidden_dim, attention_dim) if gated and own_attention else None
        self.attention_w = nn.Linear(attention_dim, 1) if own_attention else None
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_head = nn.Linear(hidden_dim, n_classes - 1) if instance_head else None

    def extra_repr(self) -> str:
        return (
            f"bag_norm={self.bag_norm}, instance_attention={self.instance_attention}, "
            f"attention_threshold={self.attention_threshold}"
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        h = self.project(x)  # (B, N, H)
        scores, instance = self.tile_scores(h)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        attention = torch.nan_to_num(attention, nan=0.0)  # an all-padding row gives zeros
        pooled = torch.bmm(attention.unsqueeze(1), h).squeeze(1)  # (B, H)
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        return MILOutput(self.classifier(pooled), attention, scores, instance, mask)

    def tile_scores(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected tiles ``(..., N, H)`` -> attention logits ``(..., N)`` and instance logits
        ``(..., N, C - 1)`` (None without an instance head)."""
        instance = self.instance_head(h) if self.instance_head is not None else None
        if self.instance_attention:
            assert instance is not None
            if self.attention_threshold is not None:
                return instance[..., self.attention_threshold - 1], instance
            return instance.sum(dim=-1), instance
        assert self.attention_v is not None and self.attention_w is not None
        gate = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            gate = gate * torch.sigmoid(self.attention_u(h))
        return self.attention_w(gate).squeeze(-1), instance


INSTANCE_ATTENTION_HEADS = ("abmil", "gated_abmil")
"""Aggregators that take ``instance_attention`` (attention from their instance head)."""


@AGGREGATORS.register("abmil")
def _abmil(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return AttentionMIL(in_dim, n_classes, gated=False, **kwargs)


@AGGREGATORS.register("gated_abmil")
def _gated_abmil(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return AttentionMIL(in_dim, n_classes, gated=True, **kwargs)


def create_aggregator(name: str, in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    """Build a registered aggregator for ``in_dim``-sized tile features."""
    return AGGREGATORS.create(name, in_dim=in_dim, n_classes=n_classes, **kwargs)
