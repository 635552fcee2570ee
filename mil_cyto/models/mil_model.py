"""Tiles (or cached tile features) -> tile encoder -> MIL aggregator -> grade logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from mil_cyto.encoders.base import TileEncoder
from mil_cyto.models.base import Aggregator, MILOutput


def pad_bags(bags: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of ``(N_i, D)`` into ``(B, N_max, D)`` zero-padded, plus a ``(B, N_max)``
    bool mask that is True on real tiles."""
    lengths = torch.tensor([len(b) for b in bags], device=bags[0].device)
    padded = pad_sequence(list(bags), batch_first=True)
    mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return padded, mask


class MILModel(nn.Module):
    """An attention-MIL classifier of photos.

    ``encoder`` is None when the model works on features cached by a frozen encoder.
    """

    encoder: TileEncoder | None
    aggregator: Aggregator

    def __init__(self, encoder: TileEncoder | None, aggregator: Aggregator) -> None:
        super().__init__()
        self.encoder = encoder
        self.aggregator = aggregator

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        """``x``: ``(B, N, D)`` features; see :meth:`forward_tiles` for pixels."""
        return self.aggregator(x, mask)

    def encode(self, tiles: torch.Tensor, chunk: int = 0, checkpoint: bool = False) -> torch.Tensor:
        """``(N, 3, T, T)`` uint8 tiles -> ``(N, D)``; ``chunk`` > 0 bounds the batch size.

        ``checkpoint`` (training only): each chunk's activations are dropped after its
        forward pass and recomputed in backward (``torch.utils.checkpoint``), so memory grows
        with one chunk's activations plus ``N x D`` features, not with ``N`` tiles' activations.
        BatchNorm running statistics are then updated twice per chunk (forward and recompute).
        """
        if self.encoder is None:
            raise RuntimeError("this model works on cached features; it has no tile encoder")
        use_ckpt = checkpoint and torch.is_grad_enabled()
        parts = [tiles] if chunk <= 0 or len(tiles) <= chunk else list(tiles.split(chunk))
        if use_ckpt:
            out = [torch_checkpoint(self.encoder, p, use_reentrant=False) for p in parts]
        else:
            out = [self.encoder(p) for p in parts]
        return out[0] if len(out) == 1 else torch.cat(out)

    def forward_tiles(
        self, bags: Sequence[torch.Tensor], chunk: int = 0, checkpoint: bool = False
    ) -> MILOutput:
        """A batch of bags of uint8 tiles, each ``(N_i, 3, T, T)``, encoded in one pass."""
        features = self.encode(torch.cat(list(bags)), chunk=chunk, checkpoint=checkpoint)
        features_per_bag = features.split([len(b) for b in bags])
        padded, mask = pad_bags(features_per_bag)
        return self.aggregator(padded, mask)
