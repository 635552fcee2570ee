"""Bags as the MIL model sees them: cached features (:class:`FeatureBag`) or tiles, and one
forward pass over a batch of either."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mil_cyto.augment import orient_and_stain
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.models.base import MILOutput
from mil_cyto.models.mil_model import MILModel, pad_bags


@dataclass
class FeatureBag:
    """A photo's cached tile features ``(N, D)`` float32 with coords ``(N, 4)`` and the
    photo's ``size`` ``(H, W)``."""

    image_id: str
    patient_id: str
    label: int
    features: np.ndarray
    coords: np.ndarray
    size: tuple[int, int]


def embed_bags(
    encoder: TileEncoder, bags: Sequence[Any], device: torch.device, batch_size: int = 256
) -> list[FeatureBag]:
    """Features of in-memory bags of tiles (``mil_cyto.data.bags.Bag``; encoder in eval mode,
    no gradient, ``batch_size`` tiles at a time), as the bag store would hold them:
    ``(N_i, encoder.out_dim)`` float32 per photo."""
    encoder.eval()
    out = []
    with torch.inference_mode():
        for bag in bags:
            parts = [
                encoder(torch.from_numpy(bag.tiles[i : i + batch_size]).to(device)).float().cpu()
                for i in range(0, len(bag.tiles), batch_size)
            ]
            features = torch.cat(parts).numpy() if parts else np.zeros((0, encoder.out_dim))
            out.append(
                FeatureBag(
                    bag.image_id,
                    bag.patient_id,
                    bag.label,
                    features.astype(np.float32),
                    bag.coords,
                    bag.size,
                )
            )
    return out


def forward_bags(
    model: MILModel,
    bags: Sequence[Any],
    device: torch.device,
    generator: torch.Generator | None = None,
    chunk: int = 0,
    runner: torch.nn.Module | None = None,
    checkpoint: bool = False,
) -> MILOutput:
    """``model`` on a batch of bags: cached features zero-padded into ``(B, N_max, D)``, or
    tiles (random orientation and stain from ``generator`` when given) encoded in one pass.
    ``runner``: a DDP-wrapped ``distributed.BagForward`` of ``model`` under torchrun."""
    if model.encoder is None:
        feats = [torch.from_numpy(b.features).to(device) for b in bags]
        padded, mask = pad_bags(feats)
        return runner(padded, mask) if runner is not None else model(padded, mask)
    tiles = [torch.from_numpy(b.tiles).to(device) for b in bags]
    if generator is not None:
        tiles = [orient_and_stain(t, generator) for t in tiles]
    if runner is not None:
        return runner(tiles, chunk=chunk, checkpoint=checkpoint)
    return model.forward_tiles(tiles, chunk=chunk, checkpoint=checkpoint)
