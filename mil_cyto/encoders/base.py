"""The tile-encoder contract: uint8 tiles in, one feature vector per tile out."""

from __future__ import annotations

import torch
from torch import nn


class TileEncoder(nn.Module):
    """Wraps a backbone with its input normalisation.

    ``forward(tiles)``: ``(N, 3, T, T)`` uint8 (0-255) or float in [0, 1] -> ``(N, out_dim)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.float()
        if tiles.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        # channels-last is 1.3-1.6x faster for convolutions on CPU and on tensor cores
        x = self.normalise(tiles).contiguous(memory_format=torch.channels_last)
        return self.backbone(x)
