"""Training and evaluating a MIL model on bags.

- :mod:`mil_cyto.training.bags`: :class:`FeatureBag`, :func:`embed_bags` and one forward
  pass over a batch of bags (cached features or tiles);
- :mod:`mil_cyto.training.prediction`: :func:`predict` (:class:`Predictions`) and
  :func:`bag_norm_once`;
- :mod:`mil_cyto.training.fit`: :func:`fit` (:class:`FitConfig`, :class:`FitResult`) with
  model selection on the validation photos, and :func:`seed_everything`.
"""

from mil_cyto.training.bags import FeatureBag, embed_bags, forward_bags
from mil_cyto.training.fit import FitConfig, FitResult, fit, seed_everything
from mil_cyto.training.prediction import Predictions, bag_norm_once, predict

__all__ = [
    "FeatureBag",
    "FitConfig",
    "FitResult",
    "Predictions",
    "bag_norm_once",
    "embed_bags",
    "fit",
    "forward_bags",
    "predict",
    "seed_everything",
]
