"""The training configuration: defaults, a JSON file, then command-line flags, in that order."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.losses import BAG_LOSSES, INSTANCE_LOSSES

DEFAULT_EPOCHS = MappingProxyType({"frozen": 48, "finetune": 16})
"""Head epochs when none are given: a frozen encoder's head is cheap to train for longer."""


DEFAULT_REFINE_EPOCHS = 5
"""Self-training epochs after self-supervised pretraining in frozen mode (docs/cin1_gap.md)."""


DEFAULT_HEADS = 3
"""Heads averaged in frozen mode: steadier attention maps than one (docs/cin1_gap.md)."""


DEFAULT_RADIAL_RINGS = 16
"""Rings of the radial profile for nucleus crops: 2-px rings out to a 64-px crop's edge."""


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as the run's ``config.json``."""

    data: str | None = None  # folder with manifest.csv; None = the built-in synthetic set
    out: str | None = None  # run folder; None = runs/mil-<timestamp>
    label_column: str | None = None  # histology (default) | cytology | label
    cells: str | None = None  # cell annotations CSV for localization; default DATA/cells.csv
    synthetic_images: int = 300
    synthetic_seed: int = 0
    encoder: str = "smallcnn"
    encoder_kwargs: dict[str, Any] | None = None
    # rings of the radial optical-density profile appended to each instance's CNN features
    # (mil_cyto.encoders.radial; stored in encoder_kwargs); None = 16 for nucleus crops, 0 else
    radial_rings: int | None = None
    weights: str | None = None  # local weights file for a timm encoder
    weights_cache: str | None = None  # an existing Hugging Face cache folder
    mode: str = "frozen"  # frozen (encoder fixed, features cached once) | finetune
    features: str | None = None  # bag store path for frozen mode; default RUN/features.h5
    # simclr (self-supervised, on the training photos' instances) | none; None = simclr, or
    # none when the encoder comes with weights (--weights / --weights-cache)
    pretrain: str | None = None
    pretrain_epochs: int = 8
    # self-training (mil_cyto.refine): a first head's attention labels the training photos'
    # instances, the encoder trains on them, the head is fitted anew; None = 5 epochs in
    # frozen mode after self-supervised pretraining, else 0 (off)
    refine_epochs: int | None = None
    refine_top_k: int = 1  # instances per abnormal training photo labelled with its grade
    # self-training rounds: each round's first head labels the instances by the features the
    # last round made (1 = the labels of the pretrained encoder's head only)
    refine_rounds: int = 2
    aggregator: str = "gated_abmil"
    aggregator_kwargs: dict[str, Any] | None = None
    bag_norm: bool = True  # standardise tile features within each photo before the head
    instance_attention: bool = True  # ABMIL heads: attention logits = tile instance logits
    # which of them: threshold k's logit "grade >= k" (1 = atypical vs normal), 0 = their sum
    attention_threshold: int = 1
    tile_size: int = 64
    stride: int | None = None  # grid stride; None = tile_size
    min_tissue: float = 0.05
    instances: str = "cells"  # cells (one crop centred on each detected nucleus) | grid tiles
    epochs: int | None = None  # head passes; None = 48 in frozen mode, 16 when fine-tuning
    # then train the head again on training + validation photos for the epochs validation
    # chose (the model kept); None = on in frozen mode, off when fine-tuning
    refit: bool | None = None
    # heads fitted apart (seeds seed, seed + 1000, ...), their mean the model; None = 3 in
    # frozen mode, 1 when fine-tuning (the heads would share one trained encoder)
    heads: int | None = None
    batch_bags: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: bool = True
    balanced_sampling: bool = False  # class-balanced photo draws per epoch
    loss: str = "ce"  # ce | ordinal (cumulative loss respecting normal < CIN1 < CIN2+)
    max_tiles: int = 0  # > 0: random tiles per photo per training step (bounded memory)
    chunk: int = 0  # > 0: encoder chunk size in fine-tuning
    checkpoint: bool = False  # gradient checkpointing of encoder chunks in fine-tuning
    instance_loss_weight: float = 1.0  # ordinal instance loss beside the bag loss
    instance_loss: str = "propagate"  # max | propagate (mil_cyto.training.ordinal_instance_loss)
    augment: bool = True
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (training and evaluation); no effect on CPU
    workers: int = 2
    decode_processes: int = 0  # > 0: decode photos on this many processes, not --workers threads
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.stride is None:
            self.stride = self.tile_size
        if self.pretrain is None:
            self.pretrain = "none" if self.weights or self.weights_cache else "simclr"
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS.get(self.mode, DEFAULT_EPOCHS["finetune"])
        if self.refit is None:
            self.refit = self.mode == "frozen"
        if self.heads is None:
            self.heads = DEFAULT_HEADS if self.mode == "frozen" else 1
        if self.refine_epochs is None:
            pretrained_here = self.mode == "frozen" and self.pretrain != "none"
            self.refine_epochs = DEFAULT_REFINE_EPOCHS if pretrained_here else 0
        kwargs = dict(self.encoder_kwargs or {})
        given = kwargs.pop("radial_rings", None)
        if self.radial_rings is None:
            default = DEFAULT_RADIAL_RINGS if self.instances == "cells" else 0
            self.radial_rings = int(given) if given is not None else default
        if self.radial_rings > 0:
            kwargs["radial_rings"] = self.radial_rings
        self.encoder_kwargs = kwargs or None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_cache_dir() -> Path:
    """Where the built-in synthetic set is cached: ``$MIL_CYTO_CACHE`` or ~/.cache/mil_cyto."""
    return Path(os.environ.get("MIL_CYTO_CACHE", Path.home() / ".cache" / "mil_cyto"))


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON config (a run's ``config.json`` works); unknown keys are an error."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MilCytoError(f"config file {path} not found") from None
    except json.JSONDecodeError as err:
        raise MilCytoError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise MilCytoError(f"config file {path} must hold a JSON object")
    known = {f.name for f in fields(TrainConfig)}
    payload = {k: v for k, v in payload.items() if k not in ("data_resolved", "mil_cyto_version")}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise MilCytoError(f"config file {path}: unknown keys {unknown}; known: {sorted(known)}")
    return payload


def resolve_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> TrainConfig:
    """Defaults, overridden by the config file, overridden by flags given on the command line."""
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    config = TrainConfig(**merged)
    if config.mode not in ("finetune", "frozen"):
        raise MilCytoError(f"--mode {config.mode!r}: use finetune or frozen")
    if config.instance_loss not in INSTANCE_LOSSES:
        raise MilCytoError(f"--instance-loss {config.instance_loss!r}: use max or propagate")
    if config.loss not in BAG_LOSSES:
        raise MilCytoError(f"--loss {config.loss!r}: use ce or ordinal")
    if config.epochs < 1 or config.batch_bags < 1:
        raise MilCytoError("--epochs and --batch-bags must be >= 1")
    if config.pretrain not in ("none", "simclr"):
        raise MilCytoError(f"--pretrain {config.pretrain!r}: use none or simclr")
    if config.pretrain_epochs < 1:
        raise MilCytoError("--pretrain-epochs must be >= 1")
    if not 0 <= config.attention_threshold < len(GRADES):
        raise MilCytoError(
            f"--attention-threshold {config.attention_threshold}: use 0 (the sum) or a grade "
            f"threshold 1..{len(GRADES) - 1}"
        )
    if config.heads < 1:
        raise MilCytoError(f"--heads {config.heads}: use 1 (one head) or more (an ensemble)")
    if config.heads > 1 and config.mode != "frozen":
        raise MilCytoError(
            "--heads > 1 needs --mode frozen (fine-tuned heads share one trained encoder); "
            "use --heads 1"
        )
    if config.refine_epochs < 0 or config.refine_top_k < 1 or config.refine_rounds < 1:
        raise MilCytoError(
            "--refine-epochs must be >= 0 (0 = off), --refine-top-k and --refine-rounds >= 1"
        )
    if config.refine_epochs > 0 and config.mode != "frozen":
        raise MilCytoError(
            "--refine-epochs needs --mode frozen (fine-tuning trains the encoder already); "
            "use --refine-epochs 0"
        )
    if config.radial_rings < 0:
        raise MilCytoError("--radial-rings must be >= 0 (0 = no radial profile)")
    if config.decode_processes < 0:
        raise MilCytoError("--decode-processes must be >= 0 (0 = decoding threads)")
    return config
