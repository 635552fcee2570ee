"""Single-instance learning (SIL): every instance takes its photo's grade, an instance
classifier learns them, and the photo's grade is pooled from the instances' probabilities.

The cytology literature finds this simple baseline strong beside attention-MIL when the
instance features are good (a photo's grade is its highest cell's, so the photo label is a
noisy label of each cell). Here it is an :class:`~mil_cyto.models.base.Aggregator` (the
registered head ``sil``): it trains through :func:`mil_cyto.training.fit` like any MIL head,
its instance loss being its :meth:`SingleInstanceHead.auxiliary_loss`.

Photo probabilities: per threshold k = 1 .. C - 1, ``P(photo >= k)`` is the mean of the
``top_k`` largest instance probabilities ``P(instance >= k)`` (``top_k`` = 1: the max),
recalibrated by a learned affine map of its log odds (one scale and offset per threshold,
starting at the identity and trained by the bag loss: copied labels make every instance of
an abnormal photo look abnormal, so the pooled probability alone would call most normal
photos abnormal; the logistic regression of :mod:`mil_cyto.instance_learning` does the same
for gradient boosting); the class probabilities are the differences of the cumulative ones
(kept non-increasing in k). The bag logits are their log (a softmax gives them back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mil_cyto.models.aggregators import AGGREGATORS, standardise_within_bag
from mil_cyto.models.base import Aggregator, MILOutput
from mil_cyto.models.common import abnormal_log_odds, full_mask, tile_projection

SIL_LOSSES = ("ce", "ordinal")
PROB_FLOOR = 1e-6  # bag class probabilities are clamped here before the log
CALIBRATION_GAIN = 10.0
"""The photo calibration's parameters are this many times its stored ones, so that Adam moves
them this much faster than the instance classifier's weights (two numbers per threshold,
learnt from one photo loss per step: at the shared learning rate a few hundred steps moved
the offset by under one log-odds unit)."""


def cumulative_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Instance class logits ``(..., C)`` -> ``P(grade >= k)`` for k = 1 .. C - 1,
    ``(..., C - 1)`` (non-increasing in k)."""
    probs = torch.softmax(logits.float(), dim=-1)
    tail = probs.flip(-1).cumsum(-1).flip(-1)  # P(>= 0), P(>= 1), ...
    return tail[..., 1:].clamp(0.0, 1.0)


def ordinal_logits(logits: torch.Tensor) -> torch.Tensor:
    """Instance class logits ``(..., C)`` -> the log odds of "grade >= k", ``(..., C - 1)``:
    ``logsumexp(l[k:]) - logsumexp(l[:k])`` (exact and stable)."""
    n = logits.shape[-1]
    return torch.stack(
        [
            torch.logsumexp(logits[..., k:], dim=-1) - torch.logsumexp(logits[..., :k], dim=-1)
            for k in range(1, n)
        ],
        dim=-1,
    )


def topk_mean(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, N, K)`` values -> ``(B, K)``: the mean of each bag's ``k`` largest over its real
    instances (fewer when the bag holds fewer; padding never counts)."""
    filled = values.masked_fill(~mask[..., None], float("-inf"))
    kk = max(1, min(k, values.shape[1]))
    top = filled.topk(kk, dim=1).values  # (B, kk, K)
    real = torch.isfinite(top)
    total = top.masked_fill(~real, 0.0).sum(dim=1)
    return total / real.sum(dim=1).clamp_min(1).to(values.dtype)


def bag_probs_from_cumulative(cumulative: torch.Tensor) -> torch.Tensor:
    """Photo ``P(>= k)`` ``(B, C - 1)`` -> class probabilities ``(B, C)`` (sum 1)."""
    ones = torch.ones_like(cumulative[:, :1])
    zeros = torch.zeros_like(cumulative[:, :1])
    upper = torch.cat([ones, cumulative], dim=1)
    lower = torch.cat([cumulative, zeros], dim=1)
    return (upper - lower).clamp_min(0.0)


class SingleInstanceHead(Aggregator):
    """An instance classifier trained on copied photo grades; photo = top-k pooling.

    Args:
        in_dim: instance feature size D.
        n_classes: grades C (3).
        hidden_dim: the instance MLP's hidden size.
        dropout: dropout after the hidden layer.
        top_k: instances averaged per threshold for the photo (1 = the max).
        instance_loss: ``ce`` (cross-entropy on the copied grade) or ``ordinal`` (binary
            cross-entropy on each "grade >= k" of the copied grade; respects the order).
        bag_norm: standardise features within each bag first.

    ``instance_logits`` are the ordinal log odds "grade >= k" ``(B, N, C - 1)``;
    ``scores`` the log odds of "not normal" ``(B, N)``; ``attention`` each instance's
    ``P(not normal)`` over the bag's sum of them (sums to 1 over real instances).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        top_k: int = 3,
        instance_loss: str = "ce",
        bag_norm: bool = False,
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if instance_loss not in SIL_LOSSES:
            raise ValueError(f"instance_loss {instance_loss!r}: use one of {SIL_LOSSES}")
        self.top_k = top_k
        self.instance_loss = instance_loss
        self.bag_norm = bag_norm
        self.tile_head = nn.Sequential(
            *tile_projection(in_dim, hidden_dim, dropout), nn.Linear(hidden_dim, n_classes)
        )
        # scale 1 + gain x s, offset gain x b: the identity at s = b = 0
        self.photo_scale = nn.Parameter(torch.zeros(n_classes - 1))
        self.photo_offset = nn.Parameter(torch.zeros(n_classes - 1))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, instance_loss={self.instance_loss}, bag_norm={self.bag_norm}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = full_mask(x, mask)
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        tile_logits = self.tile_head(x)  # (B, N, C)
        cumulative = cumulative_from_logits(tile_logits)  # (B, N, C - 1)
        pooled = topk_mean(cumulative, m, self.top_k).clamp(PROB_FLOOR, 1 - PROB_FLOOR)
        scale = 1.0 + CALIBRATION_GAIN * self.photo_scale
        offset = CALIBRATION_GAIN * self.photo_offset
        calibrated = torch.sigmoid(scale * torch.logit(pooled) + offset)
        calibrated = torch.cummin(calibrated, dim=1).values  # P(>= k) non-increasing in k
        bag = bag_probs_from_cumulative(calibrated)
        logits = torch.log(bag.clamp_min(PROB_FLOOR))
        abnormal = cumulative[..., 0].masked_fill(~m, 0.0)
        attention = abnormal / abnormal.sum(dim=1, keepdim=True).clamp_min(1e-12)
        scores = abnormal_log_odds(tile_logits.float()).masked_fill(~m, 0.0)
        instance = ordinal_logits(tile_logits.float())
        return MILOutput(logits, attention, scores, instance, mask, {"tile_logits": tile_logits})

    def auxiliary_loss(self, out: MILOutput, target: torch.Tensor) -> torch.Tensor:
        """The SIL loss: every real instance of a bag labelled with the bag's grade; each
        bag's instances averaged, bags weighted by the inverse count of their grade in the
        batch (so a rare grade weighs as much as a common one)."""
        assert out.extras is not None
        tile_logits = out.extras["tile_logits"].float()  # (B, N, C)
        m = full_mask(tile_logits, out.mask)
        b, n, c = tile_logits.shape
        copied = target[:, None].expand(b, n)
        if self.instance_loss == "ce":
            per = F.cross_entropy(tile_logits.reshape(-1, c), copied.reshape(-1), reduction="none")
            per = per.view(b, n)
        else:
            z = ordinal_logits(tile_logits)  # (B, N, C - 1)
            ks = torch.arange(1, c, device=z.device)
            y = (copied[..., None] >= ks).to(z.dtype)
            per = F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)
        weights = m.to(per.dtype)
        per_bag = (per * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        counts = torch.bincount(target, minlength=c).to(per.dtype)
        bag_weight = 1.0 / counts[target]
        return (per_bag * bag_weight).sum() / bag_weight.sum()


@AGGREGATORS.register("sil")
def _sil(in_dim: int, n_classes: int = 3, **kwargs: object) -> Aggregator:
    return SingleInstanceHead(in_dim, n_classes, **kwargs)  # type: ignore[arg-type]
