"""Captum attributions through the whole MIL model for one class, per pixel and per tile.

The model input is one photo's tile stack ``(1, N, 3, T, T)`` (floats in [0, 1]) and the
forward output is the bag's class logits ``(1, C)``, so every method attributes the bag
logit of ``target`` to the pixels of every tile at once. Tile-level scores attribute the
same logit to the tile embeddings ``(1, N, D)`` fed to the aggregator (Grad-CAM, which has
no embedding-level form, averages its pixel map over each tile). ``attention`` and
``instance_head`` read the model's own per-tile outputs and need no Captum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import (
    GradientShap,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from torch import nn

from mil_cyto.data.tiling import paint_tiles
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError
from mil_cyto.models.mil_model import MILModel
from mil_cyto.registry import Registry


@dataclass(frozen=True)
class AttributionSettings:
    """Cost knobs. ``chunk``: tiles per encoder pass (bounds memory); ``baseline``: the
    reference pixel value in [0, 1] (1.0 = empty white glass, "no cell here");
    ``gradcam_layer``: a module name inside ``encoder.backbone`` (default: its last Conv2d).
    """

    n_steps: int = 16
    n_samples: int = 8
    samples_per_pass: int = 4
    occlusion_window: int = 16
    occlusion_stride: int = 16
    chunk: int = 256
    baseline: float = 1.0
    gradcam_layer: str | None = None


@dataclass
class TileAttribution:
    """``tile`` ``(N,)`` float32, higher = more evidence for the target class; ``pixel``
    ``(N, T, T)`` float32 inside each tile, or None for tile-only methods; ``pooled``
    ``(N,)``: the same ranking within the photo on a scale comparable across photos, to rank
    its suspect cells against other photos' (the FROC pools all photos' detections), where
    ``tile`` is not on one (attention weights are shares of the photo); None: ``tile``."""

    tile: np.ndarray
    pixel: np.ndarray | None
    pooled: np.ndarray | None = None

    @property
    def across_photos(self) -> np.ndarray:
        """The tile scores that rank detections across photos."""
        return self.tile if self.pooled is None else self.pooled


@dataclass
class PhotoInput:
    """One photo for attribution: ``tiles`` ``(N, 3, T, T)`` float in [0, 1] on the model's
    device (None for a features-only model) and ``features`` ``(N, D)`` (no gradient)."""

    model: MILModel
    tiles: torch.Tensor | None
    features: torch.Tensor


AttributionFn = Callable[[PhotoInput, int, AttributionSettings], TileAttribution]
ATTRIBUTIONS: Registry[AttributionFn] = Registry("attribution method")

CAPTUM_METHODS = (
    "integrated_gradients",
    "saliency",
    "gradient_shap",
    "occlusion",
    "layer_gradcam",
)
"""The Captum methods; :func:`list_methods` adds the model's own ``attention`` and
``instance_head``."""


def _method(name: str) -> Callable[[AttributionFn], AttributionFn]:
    """Register an attribution function under ``name`` (the registry holds factories)."""

    def decorator(fn: AttributionFn) -> AttributionFn:
        ATTRIBUTIONS.register(name)(lambda: fn)
        return fn

    return decorator


def list_methods() -> list[str]:
    """Every method :func:`attribute_photo` accepts."""
    return ATTRIBUTIONS.names()


class BagLogits(nn.Module):
    """``(B, N, 3, T, T)`` float tiles in [0, 1] -> ``(B, C)`` bag logits, one bag per row."""

    def __init__(self, model: MILModel, chunk: int) -> None:
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        feats = self.model.encode(x.flatten(0, 1), self.chunk).view(b, n, -1)
        return self.model.aggregator(feats).logits


class TileInBagLogits(nn.Module):
    """``(P, 3, T, T)`` variants of tile ``index`` -> ``(P, C)`` logits of its bag, the other
    tiles held at their cached ``features`` ``(N, D)``.

    The encoder sees one tile at a time, so a window occluded inside tile i changes only
    embedding i: occluding tile by tile through this forward gives exactly the attribution
    of occluding the whole stack, for 1/N of the cost.
    """

    def __init__(self, model: MILModel, features: torch.Tensor, index: int) -> None:
        super().__init__()
        self.model = model
        self.features = features
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features.expand(len(x), -1, -1).clone()
        feats[:, self.index] = self.model.encode(x)
        return self.model.aggregator(feats).logits


class AggregatorLogits(nn.Module):
    """``(B, N, D)`` tile embeddings -> ``(B, C)`` bag logits."""

    def __init__(self, model: MILModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.aggregator(x).logits


def _require_tiles(photo: PhotoInput, method: str) -> torch.Tensor:
    return _pixels_and_encoder(photo, method)[0]


def _pixels_and_encoder(photo: PhotoInput, method: str) -> tuple[torch.Tensor, TileEncoder]:
    """The photo's tiles and the model's tile encoder, which pixel methods need."""
    encoder = photo.model.encoder
    if photo.tiles is None or encoder is None:
        raise MilCytoError(
            f"{method} works on pixels, but this model has no tile encoder (features only); "
            "load it with mil_cyto.checkpoint.load_model(run_dir), which rebuilds the encoder "
            "from model.json, or use a tile-level method (attention, instance_head)"
        )
    return photo.tiles, encoder


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)


def _bags_per_pass(photo: PhotoInput, s: AttributionSettings) -> int:
    return max(1, s.chunk // max(len(photo.features), 1))


@_method("attention")
def _attention(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """Attention weight x N (1 = uniform); class-agnostic. Across photos, the attention
    logits (before the softmax within the photo: the same order) rank the detections."""
    with torch.no_grad():
        out = photo.model.aggregator(photo.features[None])
    n = photo.features.shape[0]
    return TileAttribution(_np(out.attention[0] * n), None, pooled=_np(out.scores[0]))


@_method("instance_head")
def _instance_head(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """The per-tile ordinal logit "grade >= target" (grade >= CIN1 for target normal); across
    photos the detections are ranked by the logit "grade >= CIN1" (atypical at all), one
    threshold for every photo, where the target's threshold differs between photos."""
    with torch.no_grad():
        out = photo.model.aggregator(photo.features[None])
    if out.instance_logits is None:
        raise MilCytoError(
            "instance_head: this aggregator has no per-tile instance head; use another method"
        )
    logits = out.instance_logits[0]
    return TileAttribution(_np(logits[:, max(target, 1) - 1]), None, pooled=_np(logits[:, 0]))


@_method("integrated_gradients")
def _integrated_gradients(
    photo: PhotoInput, target: int, s: AttributionSettings
) -> TileAttribution:
    """Pixels: IG from white glass, summed over colour; tiles: IG from zero embeddings."""
    tiles = _require_tiles(photo, "integrated_gradients")
    ig = IntegratedGradients(BagLogits(photo.model, s.chunk))
    pixel = ig.attribute(
        tiles[None],
        baselines=s.baseline,
        target=target,
        n_steps=s.n_steps,
        internal_batch_size=_bags_per_pass(photo, s),
    )
    tile = IntegratedGradients(AggregatorLogits(photo.model)).attribute(
        photo.features[None], baselines=0.0, target=target, n_steps=4 * s.n_steps
    )
    return TileAttribution(_np(tile[0].sum(-1)), _np(pixel[0].sum(1)))


@_method("saliency")
def _saliency(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """|gradient|: pixels max over colour, tiles summed over the embedding."""
    tiles = _require_tiles(photo, "saliency")
    x = tiles[None].clone().requires_grad_(True)
    pixel = Saliency(BagLogits(photo.model, s.chunk)).attribute(x, target=target)
    f = photo.features[None].clone().requires_grad_(True)
    tile = Saliency(AggregatorLogits(photo.model)).attribute(f, target=target)
    return TileAttribution(_np(tile[0].sum(-1)), _np(pixel[0].amax(1)))


@_method("gradient_shap")
def _gradient_shap(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """Expected gradients from two references: white glass and the photo's mean tile
    (pixels), zero and the mean embedding (tiles); ``n_samples`` draws, in passes of
    ``samples_per_pass`` so memory stays bounded."""
    tiles = _require_tiles(photo, "gradient_shap")
    mean_tile = tiles.mean(0, keepdim=True).expand_as(tiles)
    refs = torch.stack([torch.full_like(tiles, s.baseline), mean_tile])
    explainer = GradientShap(BagLogits(photo.model, s.chunk))
    per_pass = max(1, min(s.samples_per_pass, s.n_samples))
    passes = -(-s.n_samples // per_pass)
    pixel = (
        sum(
            explainer.attribute(tiles[None], baselines=refs, n_samples=per_pass, target=target)
            for _ in range(passes)
        )
        / passes
    )
    feats = photo.features
    frefs = torch.stack([torch.zeros_like(feats), feats.mean(0, keepdim=True).expand_as(feats)])
    tile = GradientShap(AggregatorLogits(photo.model)).attribute(
        feats[None], baselines=frefs, n_samples=4 * s.n_samples, target=target
    )
    return TileAttribution(_np(tile[0].sum(-1)), _np(pixel[0].sum(1)))


@_method("occlusion")
def _occlusion(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """Logit drop when a window is painted white glass (pixels; Captum's occlusion run tile
    by tile, see :class:`TileInBagLogits`), or when a tile's embedding is replaced by the
    photo's mean embedding (tiles)."""
    tiles = _require_tiles(photo, "occlusion")
    size = tiles.shape[-1]
    window = min(s.occlusion_window, size)
    stride = max(1, min(s.occlusion_stride, window))
    n_windows = ((size - window) // stride + 1) ** 2
    with torch.no_grad():
        pixel = torch.cat(
            [
                Occlusion(TileInBagLogits(photo.model, photo.features[None], i)).attribute(
                    tiles[i : i + 1],
                    sliding_window_shapes=(3, window, window),
                    strides=(3, stride, stride),
                    baselines=s.baseline,
                    target=target,
                    perturbations_per_eval=max(1, min(n_windows, s.chunk)),
                )
                for i in range(len(tiles))
            ]
        )  # (N, 3, T, T)
        feats = photo.features
        dim = feats.shape[1]
        tile = Occlusion(AggregatorLogits(photo.model)).attribute(
            feats[None],
            sliding_window_shapes=(1, dim),
            strides=(1, dim),
            baselines=feats.mean(0, keepdim=True)[None],
            target=target,
            perturbations_per_eval=64,
        )
    return TileAttribution(_np(tile[0].mean(-1)), _np(pixel.mean(1)))


def find_layer(encoder: nn.Module, name: str | None = None) -> nn.Module:
    """The layer Grad-CAM reads: ``name`` inside ``encoder.backbone``, else its last Conv2d."""
    backbone = getattr(encoder, "backbone", encoder)
    if name is not None:
        modules = dict(backbone.named_modules())
        if name not in modules:
            raise MilCytoError(
                f"gradcam layer {name!r} not in the backbone; e.g. {list(modules)[-3:]}"
            )
        return modules[name]
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MilCytoError("layer_gradcam: the backbone has no Conv2d layer; name one to use")
    return convs[-1]


@_method("layer_gradcam")
def _layer_gradcam(photo: PhotoInput, target: int, s: AttributionSettings) -> TileAttribution:
    """Grad-CAM on the backbone's last conv layer (ReLU'd, upsampled bilinearly to the tile);
    the tile score is the map's mean over the tile."""
    tiles, encoder = _pixels_and_encoder(photo, "layer_gradcam")
    layer = find_layer(encoder, s.gradcam_layer)
    cam = LayerGradCam(BagLogits(photo.model, s.chunk), layer).attribute(
        tiles[None], target=target, relu_attributions=True
    )  # (N, 1, h, w): the layer sees the N tiles as its batch
    up = LayerAttribution.interpolate(cam, tuple(tiles.shape[-2:]), "bilinear")[:, 0]
    return TileAttribution(_np(up.mean(dim=(1, 2))), _np(up))


def photo_input(
    model: MILModel,
    tiles: np.ndarray | torch.Tensor | None,
    features: np.ndarray | torch.Tensor | None = None,
) -> PhotoInput:
    """Move a photo to the model's device: ``(N, 3, T, T)`` uint8 tiles -> floats in
    [0, 1]; ``features`` ``(N, D)`` are encoded from the tiles unless given."""
    device = next(model.parameters()).device
    t = None
    if tiles is not None:
        t = torch.as_tensor(np.asarray(tiles)).to(device)
        if t.ndim != 4 or t.shape[1] != 3:
            raise MilCytoError(f"tiles must be (N, 3, T, T); got {tuple(t.shape)}")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if features is None:
        if t is None:
            raise MilCytoError("give tiles or features")
        with torch.no_grad():
            features = model.encode(t, chunk=256)
    features = torch.as_tensor(features, dtype=torch.float32).to(device)
    return PhotoInput(model, t, features)


def attribute_tiles(
    model: MILModel,
    photo: PhotoInput,
    method: str,
    target: int,
    settings: AttributionSettings | None = None,
) -> TileAttribution:
    """Run one registered method on a prepared photo (see :func:`photo_input`)."""
    fn = ATTRIBUTIONS.create(method)  # raises MilCytoError naming the methods
    model.eval()
    with torch.no_grad():
        n_classes = model.aggregator(photo.features[None]).logits.shape[1]
    if not 0 <= target < n_classes:
        raise MilCytoError(f"target class {target} out of range 0..{n_classes - 1}")
    return fn(photo, int(target), settings or AttributionSettings())


def attribute_photo(
    model: MILModel,
    tiles: np.ndarray,
    coords: np.ndarray,
    method: str,
    target: int,
    *,
    size_hw: tuple[int, int] | None = None,
    settings: AttributionSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attribute one photo's ``target`` logit: ``(pixel_map (H, W) float32, tile_scores (N,))``.

    ``tiles`` ``(N, 3, T, T)`` uint8, ``coords`` ``(N, 4)`` ``x0, y0, x1, y1``; ``size_hw``
    defaults to the tiles' extent. Tile-only methods paint their tile score into the map.
    Overlapping tiles are averaged; NaN outside every tile.
    """
    coords = np.asarray(coords)
    if len(coords) != len(tiles):
        raise MilCytoError(f"{len(tiles)} tiles but {len(coords)} coords; give one box per tile")
    if size_hw is None:
        size_hw = (int(coords[:, 3].max()), int(coords[:, 2].max()))
    result = attribute_tiles(model, photo_input(model, tiles), method, target, settings)
    values = result.pixel if result.pixel is not None else result.tile
    return paint_tiles(size_hw, coords, values).astype(np.float32), result.tile
