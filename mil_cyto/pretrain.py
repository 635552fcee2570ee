"""Self-supervised pretraining of a tile encoder on the training photos' instances (SimCLR).

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
2020: two random views of each instance (right-angle rotation, flip, stain jitter in optical
density, a random crop resized back) are embedded, projected by a small MLP, and pulled
together against every other instance of the batch (the NT-Xent loss). No labels are used,
so the encoder may learn from the training photos before the MIL head sees a grade; the
projection MLP is discarded afterwards. On nucleus-centred crops (``--instances cells``)
each instance is about one cell, and the encoder learns to tell cell types apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mil_cyto.augment import orient_and_stain
from mil_cyto.encoders.base import TileEncoder


@dataclass
class PretrainConfig:
    """SimCLR settings: ``epochs`` passes over the instances, ``batch_size`` instances per
    step (2 x that many views), AdamW at ``lr`` on a one-cycle schedule, the NT-Xent
    ``temperature``, and the smallest random crop as a fraction of the tile side."""

    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    min_crop: float = 0.75
    seed: int = 0


def random_crop_resize(
    x: torch.Tensor, generator: torch.Generator, min_crop: float = 0.75
) -> torch.Tensor:
    """One square crop for the whole batch ``x`` ``(B, C, T, T)``: a side drawn between
    ``min_crop x T`` and ``T``, a random place, resized back to ``T`` (bilinear)."""
    size = x.shape[-1]
    side = int(torch.randint(max(1, round(min_crop * size)), size + 1, (1,), generator=generator))
    top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=generator))
    crop = x[:, :, top : top + side, left : left + side]
    if side == size:
        return crop
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of paired embeddings ``z1``, ``z2`` ``(B, D)``: each view must pick its
    partner among the other ``2B - 1`` views (cosine similarity / ``temperature``)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), -torch.inf)
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def one_cycle(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int, warm_up: float = 0.1
) -> torch.optim.lr_scheduler.LRScheduler:
    """A one-cycle schedule peaking at ``lr`` after ``warm_up`` of ``total_steps``, the warm-up
    at least 2 steps and at most 3/4 of the schedule: torch divides by zero when
    ``warm_up x total_steps`` is exactly 1 (10 steps at 10 %, 2 steps at 50 %)."""
    pct_start = min(0.75, max(warm_up, 2.0 / max(total_steps, 1)))
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct_start
    )


def projection_head(in_dim: int) -> nn.Module:
    """SimCLR's projection MLP ``in_dim -> 128 -> 64`` (trained beside the encoder, then
    discarded)."""
    return nn.Sequential(nn.Linear(in_dim, 128), nn.ReLU(inplace=True), nn.Linear(128, 64))


def contrastive_loss(
    encoder: TileEncoder,
    projector: nn.Module,
    tiles: torch.Tensor,
    generator: torch.Generator,
    *,
    min_crop: float,
    temperature: float,
    device: torch.device,
) -> torch.Tensor:
    """NT-Xent of two random views (orientation, stain, crop) of each of ``tiles``
    ``(B, 3, T, T)`` uint8, embedded by ``encoder.learned`` and ``projector``."""
    views = [
        random_crop_resize(orient_and_stain(tiles, generator, per_tile=True), generator, min_crop)
        for _ in range(2)
    ]
    z = projector(encoder.learned(torch.cat(views).to(device)))
    return nt_xent(z[: len(tiles)], z[len(tiles) :], temperature)


def pretrain_encoder(
    encoder: TileEncoder,
    tiles: torch.Tensor,
    config: PretrainConfig,
    device: torch.device,
    *,
    progress: bool = True,
) -> list[float]:
    """Train ``encoder`` in place with SimCLR on ``tiles`` ``(N, 3, T, T)`` uint8; returns the
    mean loss of each epoch.

    Deterministic for a seed on CPU at a fixed thread count. Leaves the encoder in eval mode.
    """
    if len(tiles) < 2:
        raise ValueError(f"self-supervised pretraining needs >= 2 instances, got {len(tiles)}")
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    encoder.to(device)
    projector = projection_head(encoder.backbone_dim).to(device)
    params = [*encoder.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(tiles))
    steps = len(tiles) // batch
    scheduler = one_cycle(optimizer, config.lr, config.epochs * steps)
    losses = []
    bar = tqdm(range(config.epochs), desc="pretraining", unit="epoch", disable=not progress)
    for _ in bar:
        encoder.train()
        projector.train()
        order = torch.randperm(len(tiles), generator=generator)
        total = 0.0
        for step in range(steps):
            part = tiles[order[step * batch : (step + 1) * batch]]
            loss = contrastive_loss(
                encoder,
                projector,
                part,
                generator,
                min_crop=config.min_crop,
                temperature=config.temperature,
                device=device,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        losses.append(total / steps)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    encoder.eval()
    return losses
