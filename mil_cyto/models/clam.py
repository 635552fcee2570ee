"""CLAM (Lu et al., Nature Biomedical Engineering 2021): gated attention with an instance
clustering loss, single-branch (SB) or one attention branch per class (MB), for C classes.

Instance clustering: for the bag's true class c, the ``k_sample`` tiles with the highest
attention (of branch c in MB, of the single branch in SB) are pseudo-labelled positive and
the ``k_sample`` lowest negative for class c's binary instance classifier. With
``subtyping=True`` (mutually exclusive classes) the top tiles of every other branch are also
pushed negative for that class; it is off by default because grades are nested (a CIN2+
photo holds normal and CIN1-like cells too).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mil_cyto.models.aggregators import AGGREGATORS, MILOutput, standardise_within_bag
from mil_cyto.models.base import Aggregator
from mil_cyto.models.common import full_mask, masked_softmax, tile_projection


class CLAM(Aggregator):
    """``forward(x (B, N, D), mask (B, N))`` -> :class:`MILOutput`.

    ``attention``: SB, the softmax of the single branch; MB, the branches' softmaxes mixed
    by the predicted class probabilities (a convex mix, so it still sums to 1), and
    ``scores`` the same mix of the branches' attention logits. ``extras`` carries the tile
    embeddings and per-branch attention logits for :meth:`auxiliary_loss`.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
        multi_branch: bool = False,
        k_sample: int = 8,
        instance_weight: float = 0.3,
        subtyping: bool = False,
        bag_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.multi_branch = multi_branch
        self.k_sample = k_sample
        self.instance_weight = instance_weight
        self.subtyping = subtyping
        self.bag_norm = bag_norm
        branches = n_classes if multi_branch else 1
        self.project = tile_projection(in_dim, hidden_dim, dropout)
        self.attention_v = nn.Linear(hidden_dim, attention_dim)
        self.attention_u = nn.Linear(hidden_dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, branches)
        if multi_branch:  # one scalar classifier per class on its own pooled embedding
            self.classifiers = nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(n_classes))
        else:
            self.classifiers = nn.ModuleList([nn.Linear(hidden_dim, n_classes)])
        # class c's binary instance classifier ("tile belongs to c") = output columns 2c, 2c + 1
        self.instance_classifiers = nn.Linear(hidden_dim, 2 * n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = full_mask(x, mask)
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        h = self.project(x)  # (B, N, H)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        raw = self.attention_w(gate).transpose(1, 2)  # (B, K, N), K branches
        attn = masked_softmax(raw, m[:, None, :])  # (B, K, N)
        pooled = torch.bmm(attn, h)  # (B, K, H)
        if self.multi_branch:
            logits = torch.cat([clf(pooled[:, c]) for c, clf in enumerate(self.classifiers)], dim=1)
            probs = torch.softmax(logits.detach(), dim=1)[:, :, None]  # (B, C, 1)
            attention = (probs * attn).sum(dim=1)
            scores = (probs * raw).sum(dim=1)
        else:
            logits = self.classifiers[0](pooled[:, 0])
            attention, scores = attn[:, 0], raw[:, 0]
        scores = scores.masked_fill(~m, 0.0)
        return MILOutput(logits, attention, scores, None, mask, {"h": h, "raw": raw, "mask": m})

    def auxiliary_loss(self, out: MILOutput, target: torch.Tensor) -> torch.Tensor:
        """``instance_weight`` x the mean instance clustering cross-entropy over the batch.

        Per bag ``k = min(k_sample, n_real // 2)`` tiles each side; bags with ``k = 0`` add
        nothing. Vectorised over the batch; padding is never sampled.
        """
        assert out.extras is not None
        h, raw, m = out.extras["h"], out.extras["raw"], out.extras["mask"]
        batch = torch.arange(len(h), device=h.device)
        k_bag = torch.clamp(m.sum(dim=1) // 2, max=self.k_sample)  # (B,)
        k_max = int(k_bag.max()) if len(k_bag) else 0
        if k_max < 1:
            return h.sum() * 0.0
        valid = torch.arange(k_max, device=h.device)[None, :] < k_bag[:, None]  # (B, k)

        def term(branch: torch.Tensor, cls: torch.Tensor, top: bool, label: int) -> torch.Tensor:
            """Per-bag mean CE of class ``cls``'s classifier on the top (bottom) k tiles."""
            key = branch if top else -branch
            idx = key.masked_fill(~m, float("-inf")).topk(k_max, dim=1).indices  # (B, k)
            feats = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
            logits = self.instance_classifiers(feats).view(*idx.shape, -1, 2)  # (B, k, C, 2)
            logits = logits[batch, :, cls].float()  # (B, k, 2)
            labels = torch.full(idx.shape, label, dtype=torch.long, device=h.device)
            ce = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), reduction="none")
            ce = ce.view(idx.shape) * valid
            return ce.sum(dim=1) / valid.sum(dim=1).clamp_min(1)

        own = raw[batch, target] if self.multi_branch else raw[:, 0]
        in_class = (term(own, target, True, 1) + term(own, target, False, 0)) / 2
        terms, weights = [in_class], [k_bag > 0]
        if self.subtyping:
            for c in range(self.n_classes):
                cls = torch.full_like(target, c)
                branch = raw[:, c] if self.multi_branch else raw[:, 0]
                terms.append(term(branch, cls, True, 0))
                weights.append((k_bag > 0) & (target != c))
        stacked, w = torch.stack(terms), torch.stack(weights).to(h.dtype)
        return self.instance_weight * (stacked * w).sum() / w.sum().clamp_min(1.0)


@AGGREGATORS.register("clam_sb")
def _clam_sb(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return CLAM(in_dim, n_classes, multi_branch=False, **kwargs)


@AGGREGATORS.register("clam_mb")
def _clam_mb(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return CLAM(in_dim, n_classes, multi_branch=True, **kwargs)
