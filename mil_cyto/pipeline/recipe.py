"""What a :class:`~mil_cyto.config.TrainConfig` names: the tiling, the encoder, the MIL head
(its keyword arguments, saved in the model recipe), the fit settings and the derived seeds."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mil_cyto.config import TrainConfig
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.labels import GRADES
from mil_cyto.models import Aggregator, create_aggregator
from mil_cyto.models.aggregators import INSTANCE_ATTENTION_HEADS
from mil_cyto.training import FitConfig


def head_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the MIL head ``config`` names (saved in the model recipe)."""
    kwargs: dict[str, Any] = {"bag_norm": config.bag_norm}
    if config.aggregator in INSTANCE_ATTENTION_HEADS:
        kwargs["instance_attention"] = config.instance_attention
        if config.instance_attention and config.attention_threshold > 0:
            kwargs["attention_threshold"] = config.attention_threshold
    kwargs.update(config.aggregator_kwargs or {})
    return kwargs


def create_head(config: TrainConfig, in_dim: int) -> Aggregator:
    """The MIL head ``config`` names, for ``in_dim``-sized tile features."""
    return create_aggregator(
        config.aggregator, in_dim=in_dim, n_classes=len(GRADES), **head_kwargs(config)
    )


def create_fit_config(config: TrainConfig, **overrides: Any) -> FitConfig:
    """``config``'s optimisation settings as a :class:`FitConfig`, with ``overrides``."""
    values = {f.name: getattr(config, f.name) for f in fields(FitConfig) if hasattr(config, f.name)}
    return FitConfig(**{**values, **overrides})


def derived_seed(config: TrainConfig, index: int) -> int:
    """The seed of the ``index``-th self-training round (``--refine-rounds``) or ensemble head
    (``--heads``), counted from 0, which takes the run's seed."""
    return config.seed + 1000 * index


@dataclass(frozen=True)
class ModelParts:
    """The untrained model: the encoder's ``spec`` and the ``encoder`` it built, the
    ``tiling`` that cuts its instances, and the first MIL head (``first_head``)."""

    spec: EncoderSpec
    tiling: TilingConfig
    encoder: TileEncoder
    first_head: Aggregator


def create_model_parts(config: TrainConfig) -> ModelParts:
    """The encoder, then the first head, from torch's seeded random stream in that order (so
    a run's first head is the same whatever the stages after it do)."""
    tiling = TilingConfig(config.tile_size, config.stride, config.min_tissue, config.instances)
    spec = EncoderSpec(
        config.encoder, config.weights, config.weights_cache, config.encoder_kwargs or {}
    )
    encoder = create_encoder(spec)
    return ModelParts(spec, tiling, encoder, create_head(config, encoder.out_dim))
