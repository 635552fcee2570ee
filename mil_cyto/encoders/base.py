"""The tile-encoder contract: uint8 tiles in, one feature vector per tile out."""

from __future__ import annotations

import torch
from torch import nn

from mil_cyto.encoders.radial import RadialProfile


class TileEncoder(nn.Module):
    """Wraps a backbone with its input normalisation, and optionally hand-made radial
    features beside it (:meth:`add_radial_profile`).

    ``forward(tiles)``: ``(N, 3, T, T)`` uint8 (0-255) or float in [0, 1] -> ``(N, out_dim)``:
    the backbone's ``backbone_dim`` learned features (:meth:`learned`), then the radial
    profile's, if any.
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
        self.backbone_dim = int(out_dim)
        self.out_dim = int(out_dim)
        self.radial: RadialProfile | None = None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.float()
        if tiles.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def add_radial_profile(self, rings: int) -> None:
        """Append ``6 rings`` radial optical-density features (:mod:`.radial`) to every
        tile's features; for nucleus-centred crops."""
        self.radial = RadialProfile(rings)
        self.out_dim = self.backbone_dim + self.radial.out_dim

    def learned(self, tiles: torch.Tensor) -> torch.Tensor:
        """The backbone's ``(N, backbone_dim)`` features alone (what pretraining trains)."""
        # channels-last is 1.3-1.6x faster for convolutions on CPU and on tensor cores
        x = self.normalise(tiles).contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        features = self.learned(tiles)
        if self.radial is None:
            return features
        return torch.cat([features, self.radial(tiles).to(features.dtype)], dim=1)
