"""Which photos and which of their tiles a training step sees."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def epoch_order(labels: Sequence[int], generator: torch.Generator, balanced: bool) -> list[int]:
    """One epoch's photo order: a permutation, or (``balanced``) as many draws with
    replacement, each class equally likely (the study's 1,504 / 360 / 755 becomes 1:1:1)."""
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=generator).tolist()
    y = np.asarray(labels)
    counts = np.bincount(y)
    p = torch.tensor(1.0 / counts[y], dtype=torch.float64)
    return torch.multinomial(p, n, replacement=True, generator=generator).tolist()


def bucket_by_length(
    order: Sequence[int],
    lengths: Sequence[int],
    batch_bags: int,
    generator: torch.Generator,
    window_batches: int = 8,
) -> list[int]:
    """``order`` rearranged so that consecutive ``batch_bags``-sized batches hold bags of
    similar length: within each window of ``window_batches`` batches the photos are sorted by
    tile count, cut into batches, and the batches shuffled. Padded batches then waste little
    compute (bags of 100 +- 20 tiles, 32 per batch: 30% of the padded tiles are padding at
    random, 7% bucketed), while which photos share an epoch's window stays random."""
    if batch_bags <= 1:
        return list(order)
    out: list[int] = []
    window = batch_bags * window_batches
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches = [part[i : i + batch_bags] for i in range(0, len(part), batch_bags)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            out.extend(batches[b])
    return out


def subsample_bag(bag: Any, max_tiles: int, generator: torch.Generator) -> Any:
    """A copy of ``bag`` (``Bag`` with ``tiles`` or ``FeatureBag`` with ``features``) keeping
    at most ``max_tiles`` random tiles (and their coords); ``max_tiles <= 0`` keeps all."""
    field = "tiles" if hasattr(bag, "tiles") else "features"
    n = len(getattr(bag, field))
    if max_tiles <= 0 or n <= max_tiles:
        return bag
    keep = torch.randperm(n, generator=generator)[:max_tiles].sort().values.numpy()
    return dataclasses.replace(
        bag, **{field: getattr(bag, field)[keep], "coords": bag.coords[keep]}
    )
