"""The contract every MIL head (aggregator) keeps: :class:`MILOutput` and :class:`Aggregator`.

``forward(x, mask)`` with ``x`` ``(B, N, D)`` tile features and ``mask`` ``(B, N)`` bool
(True = real tile, False = padding; None = no padding) returns a :class:`MILOutput` whose
``attention`` holds one weight per tile, zero on padding, summing to 1 over each bag's real
tiles (torchmil's contract, with padding masks).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


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


class Aggregator(nn.Module, metaclass=ABCMeta):
    """A MIL head: bags of tile features -> :class:`MILOutput` (the module docstring's
    contract).

    ``bag_norm``: True when :meth:`forward` standardises features within each bag first
    (``standardise_within_bag``); training may then standardise cached features once and set
    it False while it runs (``mil_cyto.training.bag_norm_once``). Heads that never do keep
    the class default False.
    """

    bag_norm: bool = False

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x`` ``(B, N, D)``, ``mask`` ``(B, N)`` bool or None -> the bag's output."""

    def auxiliary_loss(self, out: MILOutput, target: torch.Tensor) -> torch.Tensor | None:
        """A loss the head adds to the bag loss in training (e.g. CLAM's instance clustering,
        DSMIL's max stream), from its own ``out`` and the bag grades ``target`` ``(B,)``:
        a scalar tensor, or None (the default: no such loss)."""
        return None


def require_aggregator(head: nn.Module) -> Aggregator:
    """``head`` as an :class:`Aggregator`; a TypeError naming the fix for any other module
    (training calls its ``auxiliary_loss`` and reads its ``bag_norm``)."""
    if not isinstance(head, Aggregator):
        raise TypeError(
            f"{type(head).__name__} is not a mil_cyto.models.Aggregator: subclass it (forward "
            "returning MILOutput; auxiliary_loss and bag_norm have defaults)"
        )
    return head
