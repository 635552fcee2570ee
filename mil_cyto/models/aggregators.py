"""Attention-based MIL pooling (Ilse, Tomczak and Welling, ICML 2018), plain and gated.

Contract of every aggregator (torchmil's, with padding masks):
``forward(x, mask)`` with ``x`` ``(B, N, D)`` tile features and ``mask`` ``(B, N)`` bool
(True = real tile, False = padding) returns a :class:`MILOutput` whose ``attention`` holds
one weight per tile, zero on padding, summing to 1 over each bag's real tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mil_cyto.registry import Registry


@dataclass
class MILOutput:
    """``logits`` ``(B, C)``; ``attention`` ``(B, N)`` softmax weights; ``scores`` ``(B, N)``
    the pre-softmax attention logits (comparable across bags of different sizes);
    ``instance_logits`` ``(B, N, C - 1)`` per-tile ordinal logits "grade >= k" for
    k = 1 .. C - 1, when the aggregator has an instance head (else None); ``mask`` ``(B, N)``
    True on real tiles (None: no padding); ``extras``: aggregator-specific tensors its
    ``auxiliary_loss(out, target)`` needs (e.g. CLAM's tile embeddings), else None."""

    logits: torch.Tensor
    attention: torch.Tensor
    scores: torch.Tensor
    instance_logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] | None = None


AGGREGATORS: Registry[nn.Module] = Registry("aggregator")


def standardise_within_bag(
    x: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Each feature minus its mean over the bag's real tiles, over their std: ``(B, N, D)``.

    A photo's stain, focus and illumination shift every tile alike; atypical cells are the
    outliers within their photo. Standardising within the bag hides the first (a shortcut
    that memorises patients) and keeps the second.
    """
    if mask is None:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
    else:
        m = mask[..., None].to(x.dtype)
        n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
        mean = (x * m).sum(dim=1, keepdim=True) / n
        var = (((x - mean) * m) ** 2).sum(dim=1, keepdim=True) / n
    out = (x - mean) / torch.sqrt(var + eps)
    return out if mask is None else out * mask[..., None].to(x.dtype)


class AttentionMIL(nn.Module):
    """ABMIL: ``a_i = softmax_i(w^T tanh(V h_i) [* sigmoid(U h_i)])``, ``z = sum_i a_i h_i``.

    Args:
        in_dim: tile feature size D (taken from the encoder, never hard-coded).
        n_classes: output classes (3 grades).
        hidden_dim: size of the tile embedding after the input projection.
        attention_dim: size of the attention MLP.
        gated: the gated variant (tanh * sigmoid).
        dropout: dropout on the projected embeddings.
        instance_head: add a per-tile ordinal classifier ("this tile is >= CIN1", ">= CIN2+"),
            trained by max-pooling over the bag (see ``training.ordinal_instance_loss``).
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
    ) -> None:
        super().__init__()
        self.bag_norm = bag_norm
        self.project = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        self.attention_v = nn.Linear(hidden_dim, attention_dim)
        self.attention_u = nn.Linear(hidden_dim, attention_dim) if gated else None
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_head = nn.Linear(hidden_dim, n_classes - 1) if instance_head else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        h = self.project(x)  # (B, N, H)
        gate = torch.tanh(self.attention_v(h))
        if self.attention_u is not None:
            gate = gate * torch.sigmoid(self.attention_u(h))
        scores = self.attention_w(gate).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        attention = torch.nan_to_num(attention, nan=0.0)  # an all-padding row gives zeros
        pooled = torch.bmm(attention.unsqueeze(1), h).squeeze(1)  # (B, H)
        if mask is not None:
            scores = scores.masked_fill(~mask, 0.0)
        instance = self.instance_head(h) if self.instance_head is not None else None
        return MILOutput(self.classifier(pooled), attention, scores, instance, mask)


@AGGREGATORS.register("abmil")
def _abmil(in_dim: int, n_classes: int = 3, **kwargs: object) -> nn.Module:
    return AttentionMIL(in_dim, n_classes, gated=False, **kwargs)  # type: ignore[arg-type]


@AGGREGATORS.register("gated_abmil")
def _gated_abmil(in_dim: int, n_classes: int = 3, **kwargs: object) -> nn.Module:
    return AttentionMIL(in_dim, n_classes, gated=True, **kwargs)  # type: ignore[arg-type]


def create_aggregator(name: str, in_dim: int, n_classes: int = 3, **kwargs: object) -> nn.Module:
    """Build a registered aggregator for ``in_dim``-sized tile features."""
    return AGGREGATORS.create(name, in_dim=in_dim, n_classes=n_classes, **kwargs)
