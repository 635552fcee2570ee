"""One factory for every tile encoder: registered ones by name, else any timm model name.

Weights never come from the network: either a local file (``weights=``, safetensors or a
``weights_only`` torch checkpoint, loaded through timm's ``pretrained_cfg_overlay``) or a
Hugging Face cache folder that already holds them (``cache_dir=``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from mil_cyto.encoders.base import TileEncoder
from mil_cyto.encoders.morphometry import Morphometry, MorphometryEncoder
from mil_cyto.encoders.small_cnn import SmallCNN
from mil_cyto.errors import MilCytoError
from mil_cyto.registry import Registry

ENCODERS: Registry[TileEncoder] = Registry("encoder")

_PLAIN_MEAN = (0.5, 0.5, 0.5)
_PLAIN_STD = (0.25, 0.25, 0.25)


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder (saved beside trained models)."""

    name: str = "smallcnn"
    weights: str | None = None
    cache_dir: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@ENCODERS.register("smallcnn")
def _small_cnn(width: int = 16, out_dim: int = 128, stem_pool: int = 2) -> TileEncoder:
    backbone = SmallCNN(width=width, out_dim=out_dim, stem_pool=stem_pool).to(
        memory_format=torch.channels_last
    )
    return TileEncoder(backbone, out_dim, _PLAIN_MEAN, _PLAIN_STD)


@ENCODERS.register("morphometry")
def _morphometry(
    um_per_px: float | None = None,
    colour: bool = True,
    sigma: float = 1.5,
    cell_margin: float = 0.1,
) -> TileEncoder:
    """Hand-made nucleus morphometry and texture alone (no training; :mod:`.morphometry`)."""
    return MorphometryEncoder(
        Morphometry(um_per_px, colour=colour, sigma=sigma, cell_margin=cell_margin)
    )


def list_encoders() -> list[str]:
    """Registered encoder names; any ``timm.list_models()`` name works as well."""
    return ENCODERS.names()


def _cached_weight_file(name: str, cache_dir: Path) -> str:
    """Find a timm model's weights in an existing Hugging Face cache, never downloading."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise MilCytoError(f"timm model {name!r} has no hub id to look up in {cache_dir}")
    for filename in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename, cache_dir=str(cache_dir))
        if isinstance(found, str):
            return found
    raise MilCytoError(
        f"no cached weights for {name!r} ({hub_id}) under {cache_dir}; populate that cache "
        "on a machine with network access, or pass --weights FILE"
    )


def _load_backbone_weights(model: nn.Module, name: str, weight_file: str) -> None:
    """Load a local checkpoint (safetensors, or a torch file read with ``weights_only``) into
    a headless timm model; classifier weights are dropped, every other key must fit."""
    from safetensors import SafetensorError

    try:
        state = timm.models.load_state_dict(weight_file)  # weights_only=True for torch files
    except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as err:
        raise MilCytoError(
            f"cannot read weights {weight_file} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); give a safetensors or state-dict file"
        ) from None
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not _is_classifier_key(model, k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (missing or unexpected or wrong)[:3]
        raise MilCytoError(
            f"weights {weight_file} do not fit timm model {name!r} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys, e.g. {detail}); "
            "check that the checkpoint belongs to this architecture"
        )
    model.load_state_dict(state, strict=True)


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """The ``pretrained_cfg`` dict (mean, std, classifier...) timm sets on its models."""
    return dict(getattr(model, "pretrained_cfg", None) or {})


def _rgb(values: Any) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return r, g, b


def _feature_width(model: nn.Module, name: str) -> int:
    """The width of a timm model's features with ``num_classes=0``."""
    # timm's num_features is the pre-head width; MobileNetV3-style heads add a wider layer
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise MilCytoError(f"timm model {name!r} states no num_features; pick another encoder")
    return int(width)


def _is_classifier_key(model: nn.Module, key: str) -> bool:
    classifier = _pretrained_cfg(model).get("classifier", "fc")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    return any(key.startswith(f"{n}.") for n in names)


def _timm_encoder(
    name: str, weights: str | None, cache_dir: str | None, **kwargs: Any
) -> TileEncoder:
    if not timm.is_model(name):
        raise MilCytoError(
            f"unknown encoder {name!r}: not registered ({', '.join(list_encoders())}) "
            "and not a timm model name (see timm.list_models())"
        )
    weight_file = None
    if weights:
        weight_file = str(Path(weights).expanduser())
        if not Path(weight_file).is_file():
            raise MilCytoError(f"weights file {weight_file} not found; give a local file")
    elif cache_dir:
        weight_file = _cached_weight_file(name, Path(cache_dir).expanduser())
    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if weight_file is not None:
        _load_backbone_weights(model, name, weight_file)
    model = model.to(memory_format=torch.channels_last)
    cfg = _pretrained_cfg(model)
    mean = _rgb(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = _rgb(cfg.get("std", (0.229, 0.224, 0.225)))
    return TileEncoder(model, _feature_width(model, name), mean, std)


def create_encoder(spec: EncoderSpec | str) -> TileEncoder:
    """Build a tile encoder from a spec (or just a name, random init).

    The kwarg ``radial_rings`` (any encoder; default 0) appends that many rings' radial
    optical-density features (:mod:`mil_cyto.encoders.radial`) to the backbone's; the kwarg
    ``morphometry`` (any encoder; default off: ``true``, or a dict of
    :class:`~mil_cyto.encoders.morphometry.Morphometry` settings such as ``um_per_px``)
    appends nucleus morphometry and texture features after them.
    """
    if isinstance(spec, str):
        spec = EncoderSpec(name=spec)
    kwargs = dict(spec.kwargs)
    rings = int(kwargs.pop("radial_rings", 0))
    morphometry = kwargs.pop("morphometry", False)
    if spec.name in ENCODERS:
        if spec.weights or spec.cache_dir:
            raise MilCytoError(
                f"encoder {spec.name!r} trains from scratch; --weights/--weights-cache are for "
                "timm backbones"
            )
        encoder = ENCODERS.create(spec.name, **kwargs)
    else:
        encoder = _timm_encoder(spec.name, spec.weights, spec.cache_dir, **kwargs)
    if rings > 0:
        encoder.add_radial_profile(rings)
    if morphometry:
        settings = morphometry if isinstance(morphometry, dict) else {}
        try:
            encoder.add_morphometry(Morphometry(**settings))
        except TypeError as err:
            raise MilCytoError(f"encoder kwarg morphometry={morphometry!r}: {err}") from None
    return encoder
