"""Random orientation and stain of tiles: the augmentation of MIL training, and the views of
self-supervised pretraining (:mod:`mil_cyto.pretrain`)."""

from __future__ import annotations

import torch


def orient_and_stain(
    tiles: torch.Tensor, generator: torch.Generator, *, per_tile: bool = False
) -> torch.Tensor:
    """``(N, 3, T, T)`` uint8 -> float in [0, 1], same shape: one right-angle rotation for all
    tiles, then a flip and a stain jitter in optical density (each channel's density scaled
    by 0.6-1.4, all by 0.8-1.2, so a patient's stain cannot stand in for the grade), drawn
    once for all tiles (one photo in training) or, with ``per_tile``, for each tile.

    The random numbers come from ``generator`` (on the CPU) in a fixed order; the tiles may
    live on any device.
    """
    draws = len(tiles) if per_tile else 1
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(tiles, k, dims=(2, 3))
    flip = (torch.rand(draws, generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    gain = 0.6 + 0.8 * torch.rand(draws, 3, 1, 1, generator=generator)
    gain = gain * (0.8 + 0.4 * torch.rand(draws, 1, 1, 1, generator=generator))
    density = -torch.log(x.float().clamp_min(1.0) / 255.0)
    return torch.exp(-density * gain.to(x.device))
