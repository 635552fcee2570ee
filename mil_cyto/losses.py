"""Bag-level losses for graded labels: cross-entropy, or an ordinal cumulative loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cumulative_probs(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` class logits -> ``(B, C - 1)`` ``P(grade > k)`` for k = 0 .. C - 2."""
    probs = torch.softmax(logits.float(), dim=1)
    return probs.flip(1).cumsum(1).flip(1)[:, 1:].clamp(1e-6, 1 - 1e-6)


def ordinal_bag_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cumulative-link loss that respects normal < CIN1 < CIN2+.

    The softmax's cumulative probabilities ``P(grade > k)`` are fit by binary cross-entropy
    to ``[target > k]`` for each threshold k, summed over thresholds: calling a normal photo
    CIN2+ crosses two thresholds and costs about twice calling it CIN1, where plain
    cross-entropy charges both alike. The logits stay ordinary class logits (argmax and
    softmax unchanged); ``weight`` ``(C,)`` weights each photo by its true class.
    """
    cum = cumulative_probs(logits)
    k = torch.arange(cum.shape[1], device=logits.device)
    above = (target[:, None] > k[None, :]).to(cum.dtype)
    per_photo = F.binary_cross_entropy(cum, above, reduction="none").sum(dim=1)
    if weight is None:
        return per_photo.mean()
    w = weight[target]
    return (per_photo * w).sum() / w.sum()


def bag_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, kind: str = "ce"
) -> torch.Tensor:
    """``ce`` (softmax cross-entropy, the reference study's) or ``ordinal``."""
    if kind == "ordinal":
        return ordinal_bag_loss(logits, target, weight)
    if kind == "ce":
        return F.cross_entropy(logits.float(), target, weight=weight)
    raise ValueError(f"loss {kind!r}: use ce or ordinal")
