"""The self-training stage: ``--refine-rounds`` rounds of the encoder trained on a first MIL
head's pseudo-labels (:mod:`mil_cyto.refine`), kept in the resume folder with the
pretraining's record under a fingerprint of both."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from mil_cyto.config import TrainConfig
from mil_cyto.data.bags import Bag
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.labels import GRADES
from mil_cyto.localization import centres_in_boxes
from mil_cyto.pipeline.data import RunData, tile_photos
from mil_cyto.pipeline.pretraining import Pretrained, pretraining_fingerprint, weights_digest
from mil_cyto.pipeline.recipe import create_fit_config, create_head, derived_seed, head_kwargs
from mil_cyto.pipeline.runtime import Runtime
from mil_cyto.pipeline.stage_store import restore_encoder, save_encoder
from mil_cyto.refine import PseudoLabels, RefineConfig, self_train
from mil_cyto.resume import fingerprint

SELF_TRAINED_STAGE = "self_trained_encoder"  # in RESUME_DIR: a killed run skips both stages


def self_training_fingerprint(
    config: TrainConfig, train_ids: list[str], val_ids: list[str], tiling: TilingConfig
) -> str:
    """What the self-trained encoder depends on: the pretrained one, the first head (its
    settings and the validation photos that choose its epoch) and the self-training
    settings."""
    fit_settings = asdict(create_fit_config(config))
    settings = {
        "pretraining": pretraining_fingerprint(config, train_ids, tiling),
        "head": [config.aggregator, head_kwargs(config), fit_settings],
        "refine": [config.refine_epochs, config.refine_top_k, config.refine_rounds],
        "val": val_ids,
    }
    return fingerprint(settings)


def _fingerprint(config: TrainConfig, data: RunData, tiling: TilingConfig) -> str:
    train_rows, val_rows, _ = data.split.take(data.rows)
    return self_training_fingerprint(config, data.ids(train_rows), data.ids(val_rows), tiling)


def restore_self_trained(
    config: TrainConfig,
    data: RunData,
    encoder: TileEncoder,
    tiling: TilingConfig,
    runtime: Runtime,
) -> dict[str, Any] | None:
    """The encoder a killed run self-trained, loaded into ``encoder``, with the records of
    both stages (``pretraining``, ``self_training``); None if it has none."""
    key = _fingerprint(config, data, tiling)
    return restore_encoder(encoder, runtime.run_dir, SELF_TRAINED_STAGE, key)


def run_self_training(
    config: TrainConfig,
    data: RunData,
    encoder: TileEncoder,
    tiling: TilingConfig,
    pretrained: Pretrained,
    runtime: Runtime,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Self-train ``encoder`` in place on the training photos (``pretrained.train_tiled``,
    or cut here) with the validation photos choosing each first head's epoch, and keep it
    in the resume folder. Returns what metrics.json records of it and the instance boxes of
    every photo it cut (the pretraining's too)."""
    train_rows, val_rows, _ = data.split.take(data.rows)
    if pretrained.train_tiled is None:
        train_tiled, val_tiled = tile_photos(config, tiling, runtime.progress, train_rows, val_rows)
    else:
        train_tiled = pretrained.train_tiled
        val_tiled = tile_photos(config, tiling, runtime.progress, val_rows)[0]
    record = _self_train(
        encoder, train_tiled, val_tiled, config, data.boxes, runtime.device, runtime.progress
    )
    known_coords = {**pretrained.known_coords}
    known_coords.update({b.image_id: b.coords for b in [*train_tiled, *val_tiled]})
    stages = {"pretraining": pretrained.record, "self_training": record}
    key = _fingerprint(config, data, tiling)
    save_encoder(encoder, runtime.run_dir, SELF_TRAINED_STAGE, stages, key)
    return record, known_coords


def _self_train(
    encoder: TileEncoder,
    train_tiled: list[Bag],
    val_tiled: list[Bag],
    config: TrainConfig,
    boxes: dict[str, np.ndarray] | None,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Self-training of ``encoder`` on the MIL head's pseudo-labels (:mod:`mil_cyto.refine`),
    ``config.refine_rounds`` rounds, each with a new first head on the features the last
    round made; returns what metrics.json records of it (the last round's figures, each
    round's under ``rounds`` when there are several), with the SHA-256 of the encoder's
    weights and, where cell boxes exist (never used to train), the share of pseudo-abnormal
    instances whose centre lies in an atypical cell of their photo."""
    rounds = []
    for round_index in range(config.refine_rounds):
        head = create_head(config, encoder.out_dim)
        seed = derived_seed(config, round_index)
        settings = RefineConfig(config.refine_epochs, config.refine_top_k, seed=seed)
        record, pseudo = self_train(
            encoder,
            head,
            train_tiled,
            val_tiled,
            create_fit_config(config, seed=seed),
            settings,
            len(GRADES),
            device,
            progress=progress,
        )
        if boxes is not None:
            record["pseudo_abnormal_on_atypical_cells"] = share_on_atypical_cells(
                pseudo, train_tiled, boxes
            )
        rounds.append(record)
    record = {**rounds[-1], "encoder_sha256": weights_digest(encoder)}
    if len(rounds) > 1:
        record["rounds"] = rounds
    return record


def share_on_atypical_cells(
    pseudo: PseudoLabels, train_tiled: list[Bag], boxes: dict[str, np.ndarray]
) -> float | None:
    """The share of pseudo-abnormal instances whose centre lies in an atypical cell's box of
    their photo (a diagnostic from ``cells.csv``; never used to train); None without any."""
    positive = pseudo.labels.numpy() > 0
    hits = [
        centres_in_boxes(train_tiled[p].coords[[i]], boxes.get(train_tiled[p].image_id, []))[0]
        for p, i in zip(pseudo.photo[positive], pseudo.instance[positive], strict=True)
    ]
    return float(np.mean(hits)) if hits else None
