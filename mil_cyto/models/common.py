"""Masking helpers shared by the MIL aggregators (padded bags: True = real tile)."""

from __future__ import annotations

import torch
from torch import nn


def full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` or an all-True ``(B, N)`` mask for unpadded ``x`` ``(B, N, ...)``."""
    if mask is not None:
        return mask
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over real tiles only; padding (and all-padding rows) get exactly 0."""
    filled = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(filled, dim=dim), nan=0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` -> ``(B, D)``: the mean over each bag's real tiles."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, C)`` -> max ``(B, C)`` and argmax ``(B, C)`` over each bag's real tiles."""
    return x.masked_fill(~mask[..., None], float("-inf")).max(dim=1)


def abnormal_log_odds(tile_logits: torch.Tensor) -> torch.Tensor:
    """Per-tile ``(B, N, C)`` class logits -> ``(B, N)`` log odds of "not normal" (class 0),
    a score comparable across photos."""
    return torch.logsumexp(tile_logits[..., 1:], dim=-1) - tile_logits[..., 0]


def relative_log_attention(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log(a_i * n)``: attention relative to uniform (0 = average tile), 0 on padding.

    Comparable across bags of different sizes, for aggregators without attention logits.
    """
    n = mask.sum(dim=1, keepdim=True).clamp_min(1).to(attention.dtype)
    rel = torch.log((attention * n).clamp_min(1e-12))
    return rel.masked_fill(~mask, 0.0)


def tile_projection(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    """The heads' tile embedding ``(..., in_dim) -> (..., hidden_dim)``: linear, ReLU,
    dropout (state-dict keys ``0.weight``, ``0.bias``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
