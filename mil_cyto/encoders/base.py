"""The tile-encoder contract: uint8 tiles in, one feature vector per tile out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mil_cyto.encoders.radial import RadialProfile

if TYPE_CHECKING:
    from mil_cyto.encoders.morphometry import Morphometry


class TileEncoder(nn.Module):
    """Wraps a backbone with its input normalisation, and optionally hand-made radial
    features beside it (:meth:`add_radial_profile`).

    ``forward(tiles)``: ``(N, 3, T, T)`` uint8 (0-255) or float in [0, 1] -> ``(N, out_dim)``:
    the backbone's ``backbone_dim`` learned features (:meth:`learned`), then the radial
    profile's and the nucleus morphometry's (:meth:`hand_made`), if any.
    """

    mean: torch.Tensor  # (1, 3, 1, 1) buffers, set in __init__
    std: torch.Tensor

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
        self.morphometry: Morphometry | None = None
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
        self.out_dim += self.radial.out_dim

    def add_morphometry(self, morphometry: Morphometry) -> None:
        """Append hand-made nucleus morphometry features (a
        :class:`~mil_cyto.encoders.morphometry.Morphometry`, ``out_dim`` wide; no training)
        to every tile's features; for nucleus-centred crops."""
        self.morphometry = morphometry
        self.out_dim += morphometry.out_dim

    @property
    def trainable(self) -> bool:
        """Whether it has learned features (:meth:`learned`) that pretraining can train."""
        return self.backbone_dim > 0

    def hand_made(self, tiles: torch.Tensor) -> list[torch.Tensor]:
        """The hand-made features beside the learned ones: radial profile, morphometry."""
        return [m(tiles) for m in (self.radial, self.morphometry) if m is not None]

    def learned(self, tiles: torch.Tensor) -> torch.Tensor:
        """The backbone's ``(N, backbone_dim)`` features alone (what pretraining trains)."""
        # channels-last is 1.3-1.6x faster for convolutions on CPU and on tensor cores
        x = self.normalise(tiles).contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        features = self.learned(tiles)
        extra = self.hand_made(tiles)
        if not extra:
            return features
        # morphometry's areas (px^2) can pass float16's 65504: keep float32 beside it
        dtype = torch.float32 if self.morphometry is not None else features.dtype
        return torch.cat([features.to(dtype), *(e.to(dtype) for e in extra)], dim=1)
