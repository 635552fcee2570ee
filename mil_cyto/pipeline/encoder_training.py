"""Encoder training before the MIL heads: pretraining, then self-training (each optional),
with a killed run's finished stages restored instead of run again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mil_cyto.config import TrainConfig
from mil_cyto.data.bags import Bag
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.distributed import DistContext
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError
from mil_cyto.pipeline.data import RunData
from mil_cyto.pipeline.pretraining import Pretrained, run_pretraining
from mil_cyto.pipeline.runtime import Runtime
from mil_cyto.pipeline.self_training import restore_self_trained, run_self_training
from mil_cyto.pipeline.timing import StageTimer


@dataclass
class TrainedEncoder:
    """What metrics.json records of the encoder's ``pretraining`` and ``self_training``
    (None: not run), and ``known_coords``: instance boxes per photo found on the way (the
    feature extraction does not search those photos again)."""

    pretraining: dict[str, Any] | None = None
    self_training: dict[str, Any] | None = None
    known_coords: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def digest(self) -> str | None:
        """SHA-256 of the trained encoder's weights (None: the encoder was not trained)."""
        return (self.self_training or self.pretraining or {}).get("encoder_sha256")


def check_encoder_training(config: TrainConfig, ctx: DistContext) -> None:
    """Refuse what pretraining and self-training cannot do: an unknown method, or several
    processes."""
    if config.pretrain not in ("none", "simclr"):
        raise MilCytoError(f"pretrain {config.pretrain!r}: use none or simclr")
    if ctx.is_distributed:
        raise MilCytoError(
            "--pretrain and --refine-epochs run in one process; train without torchrun, or "
            "use --pretrain none --refine-epochs 0"
        )


def train_encoder(
    config: TrainConfig,
    data: RunData,
    encoder: TileEncoder,
    tiling: TilingConfig,
    tiled: list[Bag] | None,
    runtime: Runtime,
    timer: StageTimer,
) -> TrainedEncoder:
    """Pretrain (``--pretrain``) and self-train (``--refine-epochs``) ``encoder`` in place,
    timed as ``pretraining`` and ``self-training``; ``tiled``: every photo's bags when
    fine-tuning (None: cut what a stage needs). A killed run's self-trained encoder skips
    both stages, its pretrained one the first."""
    if config.pretrain == "none" and config.refine_epochs == 0:
        return TrainedEncoder()
    check_encoder_training(config, runtime.ctx)
    if config.refine_epochs > 0:
        restored = restore_self_trained(config, data, encoder, tiling, runtime)
        if restored is not None:
            return TrainedEncoder(restored["pretraining"], restored["self_training"])
    pretrained = Pretrained()
    if config.pretrain != "none":
        with timer.stage("pretraining"):
            pretrained = run_pretraining(config, data, encoder, tiling, tiled, runtime)
    if config.refine_epochs == 0:
        return TrainedEncoder(pretrained.record, None, pretrained.known_coords)
    with timer.stage("self-training"):
        record, known_coords = run_self_training(config, data, encoder, tiling, pretrained, runtime)
    return TrainedEncoder(pretrained.record, record, known_coords)
