"""A slide's stain: haematoxylin, eosin and light-green optical-density vectors (Beer-Lambert)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HAEM = 0
"""Row of the haematoxylin stain in :meth:`Stain.matrix` (then eosin, light green)."""


@dataclass(frozen=True)
class Stain:
    """One slide's stain: unit optical-density vectors and per-stain intensity.

    ``vectors`` rows are haematoxylin (nuclei), eosin (pink superficial cytoplasm) and light
    green (cyanophilic cytoplasm); columns are the R, G, B optical density per unit dye.
    """

    vectors: tuple[tuple[float, ...], ...]  # 3 rows of 3
    intensity: tuple[float, ...]  # 3

    def matrix(self) -> np.ndarray:
        """Stain matrix (3 stains, 3 RGB channels) float32: OD per unit dye concentration."""
        v = np.asarray(self.vectors, dtype=np.float64)
        return (v * np.asarray(self.intensity)[:, None]).astype(np.float32)


_REFERENCE_VECTORS = (
    (0.62, 0.72, 0.31),  # haematoxylin: blue-purple
    (0.06, 0.83, 0.48),  # eosin: pink
    (0.80, 0.42, 0.33),  # light green: blue-green
)


def reference_stain() -> Stain:
    """The unperturbed stain (unit vectors, intensity 1)."""
    v = np.asarray(_REFERENCE_VECTORS)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return Stain(tuple(tuple(float(x) for x in row) for row in v.round(6)), (1.0, 1.0, 1.0))


def random_stain(rng: np.random.Generator) -> Stain:
    """A patient's stain: the reference vectors perturbed in hue and scaled in intensity."""
    v = np.asarray(_REFERENCE_VECTORS) + rng.normal(0.0, 0.05, (3, 3))
    v = np.clip(v, 0.02, None)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    intensity = np.exp(rng.normal(0.0, 0.15, 3))
    return Stain(
        tuple(tuple(float(x) for x in row) for row in v.round(6)),
        tuple(float(x) for x in intensity.round(6)),
    )
