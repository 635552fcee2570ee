"""The training configuration: defaults, a JSON file, then command-line flags, in that order."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mil_cyto.cli.options import (
    cells_option,
    data_option,
    device_option,
    label_column_option,
    option,
    out_option,
    seed_option,
    threads_option,
    workers_option,
)
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
    """Everything a training run needs; saved as the run's ``config.json``. Each field is a
    flag of ``mil-cyto train`` (``--field-name``; help in its metadata); a None default is
    resolved in ``__post_init__`` from the other settings, as its ``default_help`` says.
    Those fields are annotated with their resolved type (``epochs: int``): None means "by the
    rule" on the way in, and ``__post_init__`` always replaces it, so readers never see it."""

    data: str | None = data_option()
    out: str | None = out_option("run folder", default_help="runs/mil-<timestamp>")
    label_column: str | None = label_column_option()
    cells: str | None = cells_option()
    synthetic_images: int = option(300, help="photos in the built-in synthetic set")
    synthetic_seed: int = option(0, help="seed of the built-in synthetic set")
    encoder: str = option("smallcnn", help="registered encoder or any timm model name")
    encoder_kwargs: dict[str, Any] | None = option(
        None, help="the encoder's keyword arguments as a JSON object, e.g. '{\"width\": 8}'"
    )
    radial_rings: int = option(
        None,
        help="append each instance's radial optical-density profile in this many rings around "
        "its centre to the encoder's features (mil_cyto.encoders.radial; stored in "
        "encoder_kwargs; 0 = none)",
        default_help=f"{DEFAULT_RADIAL_RINGS} for --instances cells, 0 for grid",
    )
    weights: str | None = option(
        None, help="local weights file for a timm encoder (safetensors or .pth)"
    )
    weights_cache: str | None = option(
        None, help="existing Hugging Face cache folder holding the weights"
    )
    mode: str = option(
        "frozen",
        choices=("finetune", "frozen"),
        help="train the encoder with the head (finetune), or fix it and cache its features "
        "once (frozen)",
    )
    features: str | None = option(
        None, help="bag store path in frozen mode", default_help="RUN/features.h5"
    )
    pretrain: str = option(
        None,
        choices=("none", "simclr"),
        help="self-supervised encoder pretraining on the training photos' instances, before "
        "the head sees a grade",
        default_help="simclr; none when --weights or --weights-cache is given",
    )
    pretrain_epochs: int = option(8, help="pretraining passes over the instances")
    refine_epochs: int = option(
        None,
        help="self-training after pretraining (frozen mode; mil_cyto.refine): a first head's "
        "attention labels the training photos' instances, the encoder trains on them for this "
        "many epochs, the head is fitted anew (0 = off)",
        default_help=f"{DEFAULT_REFINE_EPOCHS} after --pretrain simclr in frozen mode, else 0",
    )
    refine_top_k: int = option(
        1, help="instances per abnormal training photo labelled with its grade"
    )
    refine_rounds: int = option(
        2,
        help="self-training rounds: each round's first head labels the instances by the "
        "features the last round made (1 = the labels of the pretrained encoder's head only)",
    )
    aggregator: str = option("gated_abmil", help="MIL head, one of mil_cyto.models.AGGREGATORS")
    aggregator_kwargs: dict[str, Any] | None = option(
        None, help="the MIL head's keyword arguments as a JSON object, e.g. '{\"hidden_dim\": 64}'"
    )
    bag_norm: bool = option(True, help="standardise tile features within each photo")
    instance_attention: bool = option(
        True, help="ABMIL heads: attention logits = the per-tile grade logits"
    )
    attention_threshold: int = option(
        1,
        help="with --instance-attention: the attention logit is the tile's logit for grade >= "
        "K (1 = atypical vs normal; 0 = the sum over thresholds)",
    )
    tile_size: int = option(64, help="tile side in pixels")
    stride: int = option(None, help="grid stride in pixels", default_help="the tile size")
    min_tissue: float = option(0.05, help="minimum tissue share of a kept tile")
    instances: str = option(
        "cells",
        choices=("grid", "cells"),
        help="grid tiles, or one crop centred on each detected nucleus",
    )
    um_per_px: float | None = option(
        None,
        help="micrometres per pixel of the photos (about 0.25 for a 40x objective, 1 for 10x): "
        "photos are resampled to the working 0.7 um/px at which tiles, crops and the nucleus "
        "detector work (mil_cyto.data.pixel_size); a manifest column um_per_px overrides it "
        "per photo",
        default_help="the manifest's um_per_px column, else estimated from the photos' "
        "nucleus sizes (recorded as pixel_size in config.json)",
    )
    epochs: int = option(
        None,
        help="passes of the head over the training photos",
        default_help=f"{DEFAULT_EPOCHS['frozen']} in frozen mode, "
        f"{DEFAULT_EPOCHS['finetune']} when fine-tuning",
    )
    refit: bool = option(
        None,
        help="after choosing the epoch on the validation photos, train the head again on "
        "training + validation photos for that many epochs and keep it",
        default_help="on in frozen mode, off when fine-tuning",
    )
    heads: int = option(
        None,
        help="frozen mode: fit this many heads with different seeds (seed, seed + 1000, ...; "
        "each chooses its own epoch, then is refitted) and keep the mean of their "
        "probabilities and attention; steadier than one head",
        default_help=f"{DEFAULT_HEADS} in frozen mode, 1 when fine-tuning",
    )
    temperature_scaling: bool = option(
        True,
        help="divide the model's photo logits by one temperature fitted on the validation "
        "photos (their NLL, by the validation-selected heads before any refit), so that its "
        "probabilities are calibrated; the predicted grade does not change "
        "(mil_cyto.calibration)",
    )
    batch_bags: int = option(1, help="photos per optimisation step")
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = option(1e-4, help="the optimiser's weight decay")
    class_weights: bool = option(True, help="weight the loss by inverse class frequency")
    balanced_sampling: bool = option(False, help="draw training photos class-balanced each epoch")
    loss: str = option(
        "ce",
        choices=BAG_LOSSES,
        help="bag loss: ce, or ordinal (cumulative, respecting normal < CIN1 < CIN2+)",
    )
    max_tiles: int = option(0, help="random tiles per photo per training step (0 = all)")
    chunk: int = option(0, help="encoder chunk size when fine-tuning (0 = one pass)")
    checkpoint: bool = option(
        False, help="gradient checkpointing of encoder chunks when fine-tuning"
    )
    instance_loss_weight: float = option(1.0, help="weight of the instance loss")
    instance_loss: str = option(
        "propagate",
        choices=INSTANCE_LOSSES,
        help="per-tile MIL loss beside the bag loss (mil_cyto.training.ordinal_instance_loss)",
    )
    augment: bool = option(True, help="random rotations, flips and stain gain")
    seed: int = seed_option("training seed")
    split_seed: int = option(0, help="seed of the patient split")
    device: str = device_option()
    amp: bool = option(
        True, help="bf16 mixed precision on CUDA (training and evaluation); no effect on CPU"
    )
    workers: int = workers_option()
    decode_processes: int = option(
        0,
        help="decode photos on this many processes instead of --workers threads (for a GPU "
        "machine, where decoding and nucleus detection are the bottleneck; 0 = threads)",
    )
    threads: int = threads_option()

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


RUN_RECORD_KEYS = ("data_resolved", "pixel_size", "mil_cyto_version")
"""Keys a run's ``config.json`` adds to the settings (what the run found), skipped when it
is read back as a config file."""


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
    payload = {k: v for k, v in payload.items() if k not in RUN_RECORD_KEYS}
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
    if config.um_per_px is not None and not 0.05 <= config.um_per_px <= 50.0:
        raise MilCytoError(
            f"--um-per-px {config.um_per_px}: give micrometres per pixel in [0.05, 50] (about "
            "0.25 for a 40x objective, 1 for 10x), or leave it out to estimate it"
        )
    return config
