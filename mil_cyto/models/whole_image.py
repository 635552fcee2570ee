"""Whole-image CNN baselines (the reference study's networks) and their Grad-CAM tile scores.

A photo is squashed to ``size`` x ``size`` and classified by a timm network; Captum's
``LayerGradCam`` on the last feature maps gives a heat map that is pooled over the same
tiles a MIL model would see, so localization is measured for baselines the same way.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import nn

from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError

STUDY_ARCHS: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "densenet121": "densenet121",
    "densenet169": "densenet169",
    "densenet201": "densenet201",
    "mobilenetv3_small": "mobilenetv3_small_100",
    "mobilenetv3_large": "mobilenetv3_large_100",
}
"""The study's nine networks -> timm names; any other timm name is accepted as is."""


def timm_name(arch: str) -> str:
    return STUDY_ARCHS.get(arch, arch)


@runtime_checkable
class TimmNetwork(Protocol):
    """The parts of a timm network the baseline uses (every timm model has them)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...

    def reset_classifier(self, num_classes: int) -> None: ...


def timm_network(encoder: TileEncoder) -> TimmNetwork:
    """``encoder``'s backbone as a timm network; a MilCytoError for any other backbone."""
    backbone = encoder.backbone
    if not isinstance(backbone, TimmNetwork):
        raise MilCytoError(
            f"the whole-image baseline needs a timm network, not {type(backbone).__name__}; "
            "give --arch a timm model name"
        )
    return backbone


class FeatureMaps(nn.Module):
    """Normalisation + the backbone's ``forward_features``: ``(B, 3, S, S)`` -> ``(B, F, h, w)``
    (Grad-CAM's layer)."""

    def __init__(self, encoder: TileEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder.normalise(x).contiguous(memory_format=torch.channels_last)
        return timm_network(self.encoder).forward_features(z)


class WholeImageCNN(nn.Module):
    """``forward(x)``: ``(B, 3, S, S)`` uint8 or float in [0, 1] -> ``(B, C)`` logits."""

    def __init__(self, encoder: TileEncoder, n_classes: int = 3) -> None:
        super().__init__()
        timm_network(encoder).reset_classifier(n_classes)
        self.feature_maps = FeatureMaps(encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return timm_network(self.feature_maps.encoder).forward_head(self.feature_maps(x))


def build_whole_image_cnn(
    arch: str, weights: str | None = None, cache_dir: str | None = None, n_classes: int = 3
) -> WholeImageCNN:
    """A study network by short name (or any timm name); random init unless local weights."""
    encoder = create_encoder(EncoderSpec(timm_name(arch), weights, cache_dir))
    return WholeImageCNN(encoder, n_classes)


def grad_cam(model: WholeImageCNN, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Captum ``LayerGradCam`` (ReLU'd) for class ``target`` ``(B,)``: ``(B, h, w)`` maps."""
    cam = LayerGradCam(model, model.feature_maps)
    with torch.enable_grad():
        maps = cam.attribute(
            x.float() / 255.0 if x.dtype == torch.uint8 else x,
            target=target,
            relu_attributions=True,
        )
    return maps.detach()[:, 0]


def tile_scores(cam: np.ndarray, coords: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Mean of a ``(h, w)`` map, stretched over the ``(H, W)`` photo, inside each tile box
    ``(N, 4)`` ``x0, y0, x1, y1``: ``(N,)``."""
    height, width = size_hw
    full = F.interpolate(
        torch.as_tensor(cam, dtype=torch.float32)[None, None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    table = np.pad(full.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0, y0, x1, y1 = coords.T
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return total / ((x1 - x0) * (y1 - y0))
