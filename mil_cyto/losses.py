"""Losses for graded labels: bag-level (cross-entropy, or an ordinal cumulative loss) and
the per-tile ordinal multiple-instance loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mil_cyto.models.aggregators import MILOutput

BAG_LOSSES = ("ce", "ordinal")
INSTANCE_LOSSES = ("max", "propagate")


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
    raise ValueError(f"loss {kind!r}: use one of {BAG_LOSSES}")


def ordinal_instance_loss(out: MILOutput, target: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Ordinal multiple-instance loss on per-tile logits "grade >= k" (k = 1 .. C - 1).

    Both modes use only the MIL assumption (a photo's grade is the highest grade among its
    cells): in a photo graded below k every tile is certainly below k, so all its tiles are
    pushed down. They differ on photos graded k or higher:

    - ``max``: at least one tile is >= k, so the top-scoring tile is pushed up (mi-SVM style);
    - ``propagate``: every tile inherits the photo's label (a noisy label). The optimum of this
      loss is each tile's P(photo >= k | tile), which ranks tiles seen only in photos >= k
      (the atypical cells) above tiles seen everywhere, and cannot lock onto one arbitrary
      tile per photo the way ``max`` can when the encoder memorises its training photos.
    """
    if mode not in INSTANCE_LOSSES:
        raise ValueError(f"instance loss {mode!r}: use one of {INSTANCE_LOSSES}")
    logits = out.instance_logits
    assert logits is not None
    mask = (
        out.mask
        if out.mask is not None
        else torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    )
    logits = logits.float()
    losses = []
    for k in range(logits.shape[2]):
        z = logits[..., k]
        positive = target > k  # the photo holds a tile of grade >= k + 1
        if positive.any() and mode == "max":
            top = z[positive].masked_fill(~mask[positive], float("-inf")).amax(dim=1)
            losses.append(F.binary_cross_entropy_with_logits(top, torch.ones_like(top)))
        elif positive.any():
            pos = z[positive][mask[positive]]
            losses.append(F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)))
        if (~positive).any():
            neg = z[~positive][mask[~positive]]
            losses.append(F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    return torch.stack(losses).mean()
