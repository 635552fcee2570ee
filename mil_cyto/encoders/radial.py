"""A nucleus-centred radial profile of optical density: hand-made features beside the CNN's.

Cytologists call a koilocyte by its perinuclear halo (a clear ring around an enlarged, often
double nucleus) and an HSIL cell by its large dark nucleus in little cytoplasm; both are
radial patterns around the nucleus. For instances that are crops centred on a detected
nucleus (``--instances cells``), the mean and spread of optical density in concentric rings
around the crop's centre describe them directly, with no training and no labels.
"""

from __future__ import annotations

import torch
from torch import nn


def ring_weights(tile_size: int, rings: int) -> torch.Tensor:
    """``(rings, T * T)`` float weights: row k averages the pixels whose distance to the
    tile's centre lies in ``[k w, (k + 1) w)``, ``w = T / (2 rings)``; the corners beyond the
    inscribed circle join the last ring."""
    centre = tile_size / 2
    coords = torch.arange(tile_size, dtype=torch.float64) + 0.5 - centre
    radius = torch.hypot(coords[:, None], coords[None, :]).reshape(-1)
    width = tile_size / (2 * rings)
    index = torch.clamp((radius / width).floor().long(), max=rings - 1)
    weights = torch.zeros(rings, tile_size * tile_size, dtype=torch.float64)
    weights[index, torch.arange(tile_size * tile_size)] = 1.0
    return (weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)).float()


class RadialProfile(nn.Module):
    """``(N, 3, T, T)`` uint8 (0-255) or float in [0, 1] tiles -> ``(N, 6 rings)`` features:
    per colour channel, the mean and the standard deviation of optical density
    ``-ln((I + 1) / 256)`` (I in 0-255) in each of ``rings`` concentric rings around the
    tile's centre (channel-major: means of channel 0's rings, spreads of channel 0's rings,
    ...). Differentiable in the pixels (Captum attributions pass through it)."""

    def __init__(self, rings: int = 16) -> None:
        super().__init__()
        if rings < 1:
            raise ValueError(f"radial profile needs >= 1 ring, got {rings}")
        self.rings = int(rings)
        self.out_dim = 6 * self.rings

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        n, _, height, width = tiles.shape
        if height != width:
            raise ValueError(f"radial profile needs square tiles, got {height} x {width}")
        # built per call (~0.2 ms): a cached tensor made under inference mode could not
        # serve a later forward that autograd records (Captum's attributions)
        weights = ring_weights(height, self.rings).to(tiles.device).t()  # (T * T, rings)
        x = tiles.float() if tiles.dtype == torch.uint8 else tiles.float() * 255.0
        density = -torch.log((x + 1.0) / 256.0).reshape(n, 3, height * width)
        mean = density @ weights  # (N, 3, rings)
        spread = torch.sqrt(torch.clamp((density * density) @ weights - mean * mean, min=0) + 1e-6)
        return torch.cat([mean, spread], dim=2).reshape(n, self.out_dim)
