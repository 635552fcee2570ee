"""The pretraining stage: SimCLR on the training photos' instances before the head sees a
grade (:mod:`mil_cyto.pretrain`), kept in the resume folder under its fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mil_cyto.config import TrainConfig
from mil_cyto.data.bags import Bag
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.pipeline.data import RunData, tile_photos
from mil_cyto.pipeline.runtime import Runtime
from mil_cyto.pipeline.stage_store import restore_encoder, save_encoder
from mil_cyto.pretrain import PretrainConfig, pretrain_encoder
from mil_cyto.resume import fingerprint

PRETRAINED_STAGE = "pretrained_encoder"  # in RESUME_DIR: a killed run skips pretraining


@dataclass
class Pretrained:
    """``record``: what metrics.json records of the pretraining (None: none ran);
    ``train_tiled``: the training photos' bags it cut (None when restored or given none);
    ``known_coords``: their instance boxes per photo, for the feature extraction."""

    record: dict[str, Any] | None = None
    train_tiled: list[Bag] | None = None
    known_coords: dict[str, np.ndarray] = field(default_factory=dict)


def weights_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 of a module's weights (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pretraining_fingerprint(config: TrainConfig, train_ids: list[str], tiling: TilingConfig) -> str:
    """What the pretrained encoder depends on: encoder, pretraining settings, seed, threads,
    instances and the training photos."""
    keys = ("encoder", "encoder_kwargs", "weights", "weights_cache", "pretrain")
    settings = {k: getattr(config, k) for k in keys}
    settings.update(epochs=config.pretrain_epochs, seed=config.seed, threads=config.threads)
    settings["device"] = config.device
    return fingerprint({"settings": settings, "tiling": asdict(tiling), "train": train_ids})


def run_pretraining(
    config: TrainConfig,
    data: RunData,
    encoder: TileEncoder,
    tiling: TilingConfig,
    tiled: list[Bag] | None,
    runtime: Runtime,
) -> Pretrained:
    """Pretrain ``encoder`` in place on the training photos' instances (from ``tiled``, every
    photo's bags when fine-tuning, else cut here), or restore a killed run's."""
    train_rows = data.split.take(data.rows)[0]
    key = pretraining_fingerprint(config, data.ids(train_rows), tiling)
    record = restore_encoder(encoder, runtime.run_dir, PRETRAINED_STAGE, key)
    if record is not None:
        return Pretrained(record)
    if tiled is not None:
        train_tiled = data.split.take(tiled)[0]
    else:  # frozen mode cuts no tiles of its own: the training photos' only
        train_tiled = tile_photos(config, tiling, runtime.progress, train_rows)[0]
    record = _pretrain(encoder, train_tiled, config, runtime.device, runtime.progress)
    save_encoder(encoder, runtime.run_dir, PRETRAINED_STAGE, record, key)
    return Pretrained(record, train_tiled, {b.image_id: b.coords for b in train_tiled})


def _pretrain(
    encoder: TileEncoder,
    train_bags: list[Bag],
    config: TrainConfig,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Self-supervised pretraining of ``encoder`` on the training photos' tiled bags
    (:mod:`mil_cyto.pretrain`); returns what metrics.json records of it, with the SHA-256 of
    the encoder's weights afterwards."""
    tiles = torch.from_numpy(np.concatenate([b.tiles for b in train_bags]))
    settings = PretrainConfig(epochs=config.pretrain_epochs, seed=config.seed)
    losses = pretrain_encoder(encoder, tiles, settings, device, progress=progress)
    return {
        "method": config.pretrain,
        "instances": len(tiles),
        "loss_per_epoch": losses,
        "encoder_sha256": weights_digest(encoder),
    }
