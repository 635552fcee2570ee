"""Several MIL heads trained apart (different seeds), evaluated as one (``--heads``).

A head fitted on ~200 photos lands at a different test accuracy for each initialisation (the
default's head: 0.867 to 0.950 on the same features). Over ten seeds and three patient
splits the mean of three heads kept the mean accuracy and steadied the attention maps'
localization (docs/cin1_gap.md, "A second self-training round and three heads").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mil_cyto.models.base import Aggregator, MILOutput


class HeadEnsemble(Aggregator):
    """The mean of ``members`` (heads of one architecture), with the aggregator contract.

    ``logits`` ``(B, C)`` are the log of the members' mean class probabilities (so a softmax
    gives that mean); ``attention`` ``(B, N)`` is the mean attention (still summing to 1 over
    each bag's real tiles), ``scores`` and ``instance_logits`` the members' means. Inference
    only: each member is trained on its own (``mil_cyto.pipeline.heads``), so it has no
    auxiliary loss, and ``bag_norm`` stays False (each member standardises its own input).
    """

    def __init__(self, members: Sequence[Aggregator]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a head ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def extra_repr(self) -> str:
        return f"n_members={len(self.members)}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        outs = [member(x, mask) for member in self.members]
        log_probs = torch.stack([torch.log_softmax(o.logits, dim=-1) for o in outs])
        logits = torch.logsumexp(log_probs, dim=0) - math.log(len(outs))
        instance = None
        members_instance = [o.instance_logits for o in outs if o.instance_logits is not None]
        if len(members_instance) == len(outs):
            instance = torch.stack(members_instance).mean(0)
        return MILOutput(
            logits,
            torch.stack([o.attention for o in outs]).mean(0),
            torch.stack([o.scores for o in outs]).mean(0),
            instance,
            outs[0].mask,
        )
