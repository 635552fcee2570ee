"""TransMIL (Shao et al., NeurIPS 2021): a class token, two self-attention layers and a
pyramid position encoding generator (PPEG) between them.

Departures from the paper, for padded batches and small bags:
- Standard multi-head attention with a key padding mask replaces Nystrom attention (exact,
  and cheap for bags of hundreds of tiles; Nystrom's landmarks mix padding into real rows).
- PPEG runs per bag: its ``n`` real tokens fill a ``ceil(sqrt(n))``-sided square grid in
  bag order, the missing cells are filled by repeating the first tokens (as in the paper),
  depth-wise 7/5/3 convolutions are added, and only the ``n`` real positions are kept. A
  bag's result therefore never depends on the padding of the batch around it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mil_cyto.models.aggregators import AGGREGATORS, MILOutput, standardise_within_bag
from mil_cyto.models.base import Aggregator
from mil_cyto.models.common import full_mask, relative_log_attention


class PPEG(nn.Module):
    """Depth-wise 7x7 + 5x5 + 3x3 convolutions (plus identity) over square token grids.

    Bag ``b``'s ``n_b`` tokens fill an ``s_b = ceil(sqrt(n_b))`` grid in bag order (cell j
    holds token ``j mod n_b``) placed in the top-left corner of a zero canvas; convolution
    zero padding then makes each bag's result exactly that of its own grid, in one batch.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(B, N, D)``, ``mask`` ``(B, N)`` -> ``(B, N, D)`` (padding kept)."""
        bsz, _, dim = tokens.shape
        counts = mask.sum(dim=1).tolist()
        side = max(1, math.ceil(math.sqrt(max(counts))))
        bidx, pos, src, first = [], [], [], []
        for b, n in enumerate(counts):
            if n == 0:
                continue
            s = math.ceil(math.sqrt(n))
            j = torch.arange(s * s)
            bidx.append(torch.full((s * s,), b))
            pos.append((j // s) * side + j % s)
            src.append(j % n)
            first.append(j < n)  # the cell that carries token j's own output
        out = tokens.clone()
        if not bidx:
            return out
        b_all, p_all, s_all, real = (
            torch.cat(t).to(tokens.device) for t in (bidx, pos, src, first)
        )
        canvas = tokens.new_zeros(bsz, side * side, dim)
        canvas[b_all, p_all] = tokens[b_all, s_all]
        grid = canvas.transpose(1, 2).reshape(bsz, dim, side, side)
        mixed = grid + sum(conv(grid) for conv in self.convs)
        mixed = mixed.reshape(bsz, dim, side * side).transpose(1, 2)
        out[b_all[real], s_all[real]] = mixed[b_all[real], p_all[real]]
        return out


class TransLayer(nn.Module):
    """Pre-norm self-attention with a residual; returns the class token's attention too."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 1 + N, D)``, ``pad`` ``(B, 1 + N)`` True on padding."""
        y = self.norm(x)
        out, weights = self.attn(y, y, y, key_padding_mask=pad, need_weights=True)
        return x + out, weights[:, 0]  # weights averaged over heads: (B, 1 + N)


class TransMIL(Aggregator):
    """``attention``: the class token's last-layer attention over the real tiles (averaged
    over heads, renormalised without the class token itself); ``scores``: ``log(a_i n)``."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int = 3,
        hidden_dim: int = 128,
        heads: int = 4,
        dropout: float = 0.1,
        bag_norm: bool = False,
    ) -> None:
        super().__init__()
        self.bag_norm = bag_norm
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True))
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        self.layer1 = TransLayer(hidden_dim, heads, dropout)
        self.ppeg = PPEG(hidden_dim)
        self.layer2 = TransLayer(hidden_dim, heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = full_mask(x, mask)
        if self.bag_norm:
            x = standardise_within_bag(x, mask)
        h = self.project(x)  # (B, N, H)
        tokens = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
        pad = torch.cat([torch.zeros_like(m[:, :1]), ~m], dim=1)  # (B, 1 + N)
        tokens, _ = self.layer1(tokens, pad)
        tokens = torch.cat([tokens[:, :1], self.ppeg(tokens[:, 1:], m)], dim=1)
        tokens, weights = self.layer2(tokens, pad)
        logits = self.classifier(self.norm(tokens[:, 0]))
        tile_weights = weights[:, 1:].masked_fill(~m, 0.0)
        attention = tile_weights / tile_weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        scores = relative_log_attention(attention, m)
        return MILOutput(logits, attention, scores, None, mask)


@AGGREGATORS.register("transmil")
def _transmil(in_dim: int, n_classes: int = 3, **kwargs: Any) -> Aggregator:
    return TransMIL(in_dim, n_classes, **kwargs)
