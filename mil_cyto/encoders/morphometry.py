"""Hand-made nucleus morphometry and texture (scikit-image): features with no training.

For instances that are crops centred on a nucleus (``--instances cells``, or CRIC's crops),
the nucleus at the crop's centre is segmented and described the way cytologists grade it:
its size and shape, its darkness (optical density), the nucleus-to-cell ratio, and its
chromatin texture. No weights, no labels; the same numbers on every machine.

Segmentation, per crop of side ``T`` (every radius scales with ``T``):

1. grey optical density ``OD = mean_c -ln((I_c + 1) / 256)`` (Beer-Lambert), smoothed
   (Gaussian, ``sigma`` px);
2. an Otsu threshold on the pixels within ``0.4 T`` of the centre (nucleus against its own
   surroundings, so a pale or a dark stain both work), a binary opening that cuts thin
   bridges to neighbours;
3. the nucleus: the filled connected component holding the densest pixel within ``0.12 T``
   of the centre (no component there: ``nuc_found = 0`` and the nucleus features are 0);
4. the cell (nucleus plus cytoplasm within the crop): the component around the nucleus of
   pixels darker than the crop's glass (its 5th-percentile OD) by ``cell_margin``;
5. threshold-free context: OD percentiles within ``0.4 T`` of the centre, and the areas of
   the components darker than the glass by 0.4 and by 0.7 OD that reach ``0.12 T`` of it.

Units: ``um_per_px`` (None = pixels) turns areas into um^2, lengths into um and integrated
OD into OD um^2, so a magnification setting can scale them; ratios, OD and texture have
no unit.

:data:`FEATURE_NAMES` lists the columns; :data:`COLOUR_FEATURES` are the ones that read the
stain's colour rather than the nucleus's form (per-channel OD, haematoxylin / eosin means,
the glass): leave them out to measure morphology without the slide-stain confound.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk
from torch import nn

from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError

SHAPE_FEATURES: tuple[str, ...] = (
    "nuc_found",
    "nuc_area",
    "nuc_perimeter",
    "nuc_major_axis",
    "nuc_minor_axis",
    "nuc_eccentricity",
    "nuc_solidity",
    "nuc_extent",
    "nuc_circularity",
    "nuc_centre_offset",
    "cell_area",
    "nc_ratio",
)
DENSITY_FEATURES: tuple[str, ...] = (
    "nuc_od_mean",
    "nuc_od_max",
    "nuc_od_std",
    "nuc_od_integrated",
    "cyto_od_mean",
    "nuc_cyto_contrast",
    "centre_od_mean",
    "centre_od_std",
    "centre_od_p90",
    "centre_od_p99",
    "dark_area_low",
    "dark_area_high",
)
GLCM_PROPS: tuple[str, ...] = (
    "contrast",
    "dissimilarity",
    "homogeneity",
    "energy",
    "correlation",
)
LBP_POINTS = 8
TEXTURE_FEATURES: tuple[str, ...] = (
    *(f"glcm_{p}" for p in GLCM_PROPS),
    *(f"lbp_{k}" for k in range(LBP_POINTS + 2)),
)
COLOUR_FEATURES: tuple[str, ...] = (
    "nuc_od_r",
    "nuc_od_g",
    "nuc_od_b",
    "cyto_od_r",
    "cyto_od_g",
    "cyto_od_b",
    "nuc_haem",
    "nuc_eosin",
    "cyto_haem",
    "cyto_eosin",
    "glass_od_r",
    "glass_od_g",
    "glass_od_b",
)
FEATURE_NAMES: tuple[str, ...] = (
    *SHAPE_FEATURES,
    *DENSITY_FEATURES,
    *TEXTURE_FEATURES,
    *COLOUR_FEATURES,
)
_AREA = {"nuc_area", "cell_area", "nuc_od_integrated", "dark_area_low", "dark_area_high"}
_LENGTH = {"nuc_perimeter", "nuc_major_axis", "nuc_minor_axis", "nuc_centre_offset"}
_DARK_LOW, _DARK_HIGH = 0.4, 0.7  # OD above the glass: thresholds of the dark areas
_GLCM_LEVELS = 16
_GLCM_OD_RANGE = 2.0  # OD mapped onto the GLCM's grey levels: [0, 2] (I down to ~35)


def optical_density(tiles: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 -> ``(..., 3)`` float32 optical density ``-ln((I + 1) / 256)``."""
    return -np.log((tiles.astype(np.float32) + 1.0) / 256.0)


def _radius(size: int) -> np.ndarray:
    centre = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(yy - centre, xx - centre)


class Morphometry(nn.Module):
    """``(N, 3, T, T)`` uint8 (0-255) or float in [0, 1] tiles -> ``(N, len(FEATURE_NAMES))``
    float32 features (on the tiles' device), computed on the CPU with scikit-image; not
    differentiable, never trained (no parameters). ``um_per_px``: pixel size for areas and
    lengths (None = pixels); ``colour``: keep :data:`COLOUR_FEATURES` (False drops them);
    ``sigma``: Gaussian smoothing (px) before thresholding; ``cell_margin``: OD above the
    glass that counts as cell."""

    def __init__(
        self,
        um_per_px: float | None = None,
        *,
        colour: bool = True,
        sigma: float = 1.5,
        cell_margin: float = 0.1,
    ) -> None:
        super().__init__()
        if um_per_px is not None and um_per_px <= 0:
            raise MilCytoError(f"um_per_px must be > 0 (or None = pixels), got {um_per_px}")
        self.um_per_px = um_per_px
        self.colour = bool(colour)
        self.sigma = float(sigma)
        self.cell_margin = float(cell_margin)
        self.names = (
            FEATURE_NAMES if colour else tuple(n for n in FEATURE_NAMES if n not in COLOUR_FEATURES)
        )
        self.out_dim = len(self.names)
        scale = 1.0 if um_per_px is None else float(um_per_px)
        units = np.ones(len(FEATURE_NAMES), dtype=np.float64)
        for i, name in enumerate(FEATURE_NAMES):
            units[i] = scale**2 if name in _AREA else scale if name in _LENGTH else 1.0
        self._units = units
        self._keep = np.array([n in self.names for n in FEATURE_NAMES])

    @torch.compiler.disable
    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        if tiles.ndim != 4 or tiles.shape[1] != 3 or tiles.shape[2] != tiles.shape[3]:
            raise ValueError(f"morphometry needs (N, 3, T, T) tiles, got {tuple(tiles.shape)}")
        with torch.no_grad():
            x = tiles.detach()
            if x.dtype != torch.uint8:
                x = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
            array = x.permute(0, 2, 3, 1).cpu().numpy()
        features = self.compute(array)
        return torch.from_numpy(features).to(tiles.device)

    def compute(self, tiles: np.ndarray) -> np.ndarray:
        """``(N, T, T, 3)`` uint8 RGB -> ``(N, out_dim)`` float32 features."""
        n, size = tiles.shape[0], tiles.shape[1]
        if n == 0:
            return np.zeros((0, self.out_dim), dtype=np.float32)
        od = optical_density(tiles)  # (N, T, T, 3)
        grey = od.mean(axis=3)
        smooth = ndimage.gaussian_filter(grey, sigma=(0, self.sigma, self.sigma))
        hed = rgb2hed(tiles.reshape(-1, size, 3)).reshape(n, size, size, 3)
        radius = _radius(size)
        disc, centre = radius <= 0.4 * size, radius <= 0.12 * size
        opening = disk(max(1, round(size / 50)))
        out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
        for i in range(n):
            out[i] = self._one(od[i], grey[i], smooth[i], hed[i], disc, centre, opening)
        out *= self._units
        return out[:, self._keep].astype(np.float32)

    def _one(
        self,
        od: np.ndarray,
        grey: np.ndarray,
        smooth: np.ndarray,
        hed: np.ndarray,
        disc: np.ndarray,
        centre: np.ndarray,
        opening: np.ndarray,
    ) -> np.ndarray:
        """All of :data:`FEATURE_NAMES` for one crop (``od`` ``(T, T, 3)``, ``grey`` and
        ``smooth`` ``(T, T)``, ``hed`` ``(T, T, 3)``), in pixels."""
        values = dict.fromkeys(FEATURE_NAMES, 0.0)
        glass = np.percentile(smooth, 5)
        self._context(od, grey, smooth, glass, disc, centre, values)
        nucleus = self._nucleus(smooth, disc, centre, opening)
        cell = self._cell(smooth, glass, nucleus)
        self._cytoplasm(od, grey, hed, cell & ~nucleus, values)
        region = nucleus if nucleus.any() else disc
        self._texture(grey, region, values)
        values["cell_area"] = float(cell.sum())
        if nucleus.any():
            self._nucleus_features(od, grey, smooth, hed, nucleus, cell, values)
        return np.fromiter(values.values(), dtype=np.float64, count=len(values))

    @classmethod
    def _context(
        cls,
        od: np.ndarray,
        grey: np.ndarray,
        smooth: np.ndarray,
        glass: float,
        disc: np.ndarray,
        centre: np.ndarray,
        values: dict[str, float],
    ) -> None:
        """The threshold-free features into ``values``: the glass's OD per channel (the
        pixels at or below the ``glass`` level), OD statistics over the central ``disc`` and
        the dark areas reaching the ``centre``."""
        glass_px = smooth <= glass
        for c, name in enumerate(("glass_od_r", "glass_od_g", "glass_od_b")):
            values[name] = float(od[..., c][glass_px].mean())
        values["centre_od_mean"] = float(grey[disc].mean())
        values["centre_od_std"] = float(grey[disc].std())
        values["centre_od_p90"], values["centre_od_p99"] = (
            float(v) for v in np.percentile(smooth[disc], (90, 99))
        )
        values["dark_area_low"] = cls._dark_area(smooth, glass + _DARK_LOW, centre)
        values["dark_area_high"] = cls._dark_area(smooth, glass + _DARK_HIGH, centre)

    @staticmethod
    def _cytoplasm(
        od: np.ndarray,
        grey: np.ndarray,
        hed: np.ndarray,
        cyto: np.ndarray,
        values: dict[str, float],
    ) -> None:
        """The cytoplasm's (``cyto`` mask) OD and stain means into ``values`` (left 0 when
        the mask is empty)."""
        if not cyto.any():
            return
        values["cyto_od_mean"] = float(grey[cyto].mean())
        for c, name in enumerate(("cyto_od_r", "cyto_od_g", "cyto_od_b")):
            values[name] = float(od[..., c][cyto].mean())
        values["cyto_haem"] = float(hed[..., 0][cyto].mean())
        values["cyto_eosin"] = float(hed[..., 1][cyto].mean())

    @staticmethod
    def _nucleus_features(
        od: np.ndarray,
        grey: np.ndarray,
        smooth: np.ndarray,
        hed: np.ndarray,
        nucleus: np.ndarray,
        cell: np.ndarray,
        values: dict[str, float],
    ) -> None:
        """The found ``nucleus``'s shape, density and stain features into ``values`` (its
        ratio to the ``cell`` mask; its contrast to the cytoplasm already in ``values``)."""
        props = regionprops(nucleus.astype(np.uint8))[0]
        inside = grey[nucleus]
        size = grey.shape[0]
        centroid = np.asarray(props.centroid) - (size - 1) / 2
        values.update(
            nuc_found=1.0,
            nuc_area=float(props.area),
            nuc_perimeter=float(props.perimeter),
            nuc_major_axis=float(props.axis_major_length),
            nuc_minor_axis=float(props.axis_minor_length),
            nuc_eccentricity=float(props.eccentricity),
            nuc_solidity=float(props.solidity),
            nuc_extent=float(props.extent),
            nuc_circularity=float(4 * np.pi * props.area / max(props.perimeter, 1.0) ** 2),
            nuc_centre_offset=float(np.hypot(*centroid)),
            nc_ratio=float(props.area / max(cell.sum(), 1)),
            nuc_od_mean=float(inside.mean()),
            nuc_od_max=float(smooth[nucleus].max()),
            nuc_od_std=float(inside.std()),
            nuc_od_integrated=float(inside.sum()),
            nuc_haem=float(hed[..., 0][nucleus].mean()),
            nuc_eosin=float(hed[..., 1][nucleus].mean()),
        )
        values["nuc_cyto_contrast"] = values["nuc_od_mean"] - values["cyto_od_mean"]
        for c, name in enumerate(("nuc_od_r", "nuc_od_g", "nuc_od_b")):
            values[name] = float(od[..., c][nucleus].mean())

    @staticmethod
    def _nucleus(
        smooth: np.ndarray, disc: np.ndarray, centre: np.ndarray, opening: np.ndarray
    ) -> np.ndarray:
        """The filled component of dark pixels holding the densest central pixel."""
        local = smooth[disc]
        if local.max() - local.min() < 1e-3:
            return np.zeros_like(disc)
        dark = ndimage.binary_opening(smooth > threshold_otsu(local), structure=opening)
        labels, count = ndimage.label(dark)
        if count == 0:
            return np.zeros_like(disc)
        if not (centre & dark).any():
            return np.zeros_like(disc)
        central = np.where(centre & dark, smooth, -np.inf)
        seed = labels.flat[int(np.argmax(central))]
        return ndimage.binary_fill_holes(labels == seed)

    @staticmethod
    def _dark_area(smooth: np.ndarray, level: float, centre: np.ndarray) -> float:
        """Pixels of the components darker than ``level`` that reach the central disc: a
        nucleus size that needs no threshold of its own."""
        labels, count = ndimage.label(smooth > level)
        if count == 0:
            return 0.0
        hit = np.unique(labels[centre])
        hit = hit[hit > 0]
        return float(np.isin(labels, hit).sum()) if hit.size else 0.0

    def _cell(self, smooth: np.ndarray, glass: float, nucleus: np.ndarray) -> np.ndarray:
        """The component of pixels darker than the glass by ``cell_margin`` around the
        nucleus (the whole such mask when there is no nucleus)."""
        stained = smooth > glass + self.cell_margin
        if not nucleus.any():
            return stained
        labels, _ = ndimage.label(stained | nucleus)
        keep = np.unique(labels[nucleus])
        return np.isin(labels, keep[keep > 0])

    @staticmethod
    def _texture(grey: np.ndarray, region: np.ndarray, values: dict[str, float]) -> None:
        """GLCM (distances 1 and 2, four angles, averaged) and uniform LBP (8 points,
        radius 1; 10-bin histogram) of grey OD over ``region``'s pixels."""
        rows, cols = np.nonzero(region)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        patch, mask = grey[r0:r1, c0:c1], region[r0:r1, c0:c1]
        levels = np.clip(patch / _GLCM_OD_RANGE * (_GLCM_LEVELS - 1), 0, _GLCM_LEVELS - 2)
        quantised = np.where(mask, levels.astype(np.uint8) + 1, 0).astype(np.uint8)
        glcm = graycomatrix(
            quantised,
            distances=[1, 2],
            angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
            levels=_GLCM_LEVELS,
            symmetric=True,
        )[1:, 1:].astype(np.float64)  # level 0 = outside the region: dropped
        total = glcm.sum(axis=(0, 1), keepdims=True)
        if total.min() > 0:
            glcm /= total
            for prop in GLCM_PROPS:
                values[f"glcm_{prop}"] = float(np.nan_to_num(graycoprops(glcm, prop)).mean())
        scaled = np.clip(grey / _GLCM_OD_RANGE * 255, 0, 255).astype(np.uint8)
        lbp = local_binary_pattern(scaled, LBP_POINTS, 1, method="uniform")[region]
        hist = np.bincount(lbp.astype(np.int64), minlength=LBP_POINTS + 2) / max(lbp.size, 1)
        for k in range(LBP_POINTS + 2):
            values[f"lbp_{k}"] = float(hist[k])


class MorphometryEncoder(TileEncoder):
    """The standalone encoder ``morphometry``: :class:`Morphometry` features only.

    It has no learned features (``backbone_dim`` 0, ``trainable`` False): SimCLR
    pretraining and self-training have nothing to train, and :meth:`learned` (what they
    train) raises a :class:`MilCytoError` saying so; run it with ``--pretrain none
    --refine-epochs 0`` (frozen mode). To put morphometry beside a CNN's features use
    ``encoder_kwargs`` ``{"morphometry": true}`` on any encoder instead.
    """

    def __init__(self, morphometry: Morphometry) -> None:
        super().__init__(nn.Identity(), 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.add_morphometry(morphometry)

    def learned(self, tiles: torch.Tensor) -> torch.Tensor:
        raise MilCytoError(
            "encoder 'morphometry' has no learned features: self-supervised pretraining and "
            "self-training need a trainable encoder; use --pretrain none --refine-epochs 0, "
            "or put morphometry beside a CNN (--encoder smallcnn with encoder_kwargs "
            '{"morphometry": true})'
        )

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.hand_made(tiles), dim=1)
