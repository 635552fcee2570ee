"""How far a model's photo probabilities can be trusted, and one temperature that mends them.

- :func:`expected_calibration_error` (ECE, equal-width bins on the top-class confidence) and
  :func:`brier_score` (multiclass, scikit-learn's) of probabilities ``(B, C)``;
- :func:`fit_temperature`: the ``T`` minimising the NLL of ``softmax(logits / T)`` on photos
  the model was not trained on (Guo et al. 2017, "On calibration of modern neural networks");
  dividing by ``T > 0`` keeps each photo's argmax, so the predicted grade does not change;
- :func:`attach_temperature`: a reloaded model's aggregator divides its logits by the
  temperature saved in ``model.json`` (``calibration.temperature``), so that every caller
  (``predict``, explain, the review app) reads the same calibrated probabilities.

Which photos the training run fits ``T`` on (``mil_cyto.pipeline.heads`` and
``mil_cyto.pipeline.evaluation``): the validation photos, as predicted by the
validation-selected heads *before* ``--refit``. The refitted heads trained on the validation
photos, so their validation logits would be in-sample and too confident to calibrate
anything; the pre-refit heads only chose their epoch on them. The same ``T`` is then applied
to the refitted model, which has the pre-refit heads' recipe and epochs (on more photos; its
confidence can only be checked on the test photos, where the run reports ECE and Brier
before and after). The test photos are never used to fit ``T``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from torch import nn
from torch.utils.hooks import RemovableHandle

from mil_cyto.errors import MilCytoError
from mil_cyto.models.base import MILOutput

N_BINS = 10
"""Equal-width confidence bins of the ECE and the reliability plot."""

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The temperatures :func:`fit_temperature` searches (a bounded search on ``log T``): a
validation set the heads separate perfectly drives the NLL's optimum towards 0."""


def top_class(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's top-class confidence ``(B,)`` and whether that class is its label
    ``(B,)`` (0 / 1), from ``probs`` ``(B, C)`` and integer ``labels`` ``(B,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.int64)


def confidence_bins(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin index ``(B,)`` of each confidence in ``n_bins`` equal-width bins of [0, 1], as
    :func:`sklearn.calibration.calibration_curve` bins them (``(lo, hi]``, the first
    ``[0, hi]``), so that the ECE and the reliability plot share their bins."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> float:
    """ECE of ``probs`` ``(B, C)`` against ``labels`` ``(B,)``: over equal-width bins of the
    top-class confidence, the mean of |accuracy - mean confidence| weighted by the bin's
    share of photos; 0 is perfectly calibrated, at most 1. NaN with no photo."""
    confidence, correct = top_class(probs, labels)
    if len(confidence) == 0:
        return float("nan")
    bins = confidence_bins(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score of ``probs`` ``(B, C)``: the mean over photos of the squared
    distance to the one-hot label, sum over the ``C`` classes (0 best, 2 worst; not halved).
    NaN with no photo. Rows are renormalised in float64 first (float32 softmax rows sum to 1
    only to ~1e-7, which scikit-learn warns about)."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    probs = probs / probs.sum(axis=1, keepdims=True)
    classes = list(range(probs.shape[1]))
    return float(brier_score_loss(labels, probs, labels=classes, scale_by_half=False))


def probability_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """``{"ece", "brier", "n_bins"}`` of ``probs`` ``(B, C)`` against ``labels`` ``(B,)``
    (metrics.json's ``calibration`` of a model that was not temperature-scaled)."""
    return {
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
        "n_bins": N_BINS,
    }


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reliability diagram's points over the non-empty bins: accuracy, mean top-class
    confidence and photo count, each ``(K,)`` (scikit-learn's ``calibration_curve`` on
    "top class right" against its confidence)."""
    confidence, correct = top_class(probs, labels)
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, pos_label=1)
    count = np.bincount(confidence_bins(confidence, n_bins), minlength=n_bins)
    return accuracy, mean_conf, count[count > 0]


def scaled_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` ``(B, C)`` float32, computed as ``predict`` computes
    a model's probabilities (torch, float32), so a reloaded model gives the same values."""
    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float32)) / temperature
    return torch.softmax(scaled, dim=1).numpy()


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` ``(B,)`` under
    ``softmax(logits / temperature)``, ``logits`` ``(B, C)``, in float64."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(log_p)), np.asarray(labels)].mean())


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> float:
    """The temperature ``T`` in ``bounds`` minimising :func:`nll` of ``labels`` ``(B,)``
    under ``softmax(logits / T)``, ``logits`` ``(B, C)``: scipy's bounded Brent search on
    ``log T`` (the NLL is convex in ``1 / T``, so its minimum is unique). 1.0 with no photo.
    Fit it on photos the model did not train on (module docstring)."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 1.0
    if not np.isfinite(logits).all():
        raise ValueError("fit_temperature: the logits hold NaN or infinite values")
    lo, hi = (math.log(b) for b in bounds)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    best = float(math.exp(found.x))
    # the bounded search never evaluates 1.0 itself: keep it where it is no worse
    return best if nll(logits, labels, best) < nll(logits, labels, 1.0) else 1.0


def log_mean_softmax(logits: Sequence[np.ndarray]) -> np.ndarray:
    """The logits ``(B, C)`` of the mean of several heads' probabilities, each head's
    ``logits`` ``(B, C)``: ``log mean_k softmax(logits_k)``, as
    :class:`~mil_cyto.models.HeadEnsemble` computes them (one head: its own logits)."""
    if len(logits) == 1:
        return np.asarray(logits[0], dtype=np.float32)
    stacked = np.stack([log_softmax(np.asarray(z, dtype=np.float64), axis=1) for z in logits])
    return (logsumexp(stacked, axis=0) - math.log(len(logits))).astype(np.float32)


def check_temperature(value: object, where: str) -> float:
    """``value`` as a positive finite temperature.

    Raises:
        MilCytoError: anything else, naming ``where`` (e.g. the model.json it came from).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MilCytoError(f"{where}: calibration.temperature {value!r} is not a number")
    if not (math.isfinite(value) and value > 0):
        raise MilCytoError(
            f"{where}: calibration.temperature {value!r} must be a positive number; use the "
            "model.json saved with these weights"
        )
    return float(value)


def attach_temperature(aggregator: nn.Module, temperature: float) -> RemovableHandle | None:
    """Make ``aggregator`` return its :class:`MILOutput` logits divided by ``temperature``
    (a forward hook; attention, scores and instance logits untouched), so that the softmax
    of its logits is the calibrated probability wherever the aggregator is called. Returns
    the hook's handle (``handle.remove()`` undoes it), None for ``temperature`` 1."""
    if temperature == 1.0:
        return None

    def divide(module: nn.Module, inputs: object, output: MILOutput) -> MILOutput:
        return dataclasses.replace(output, logits=output.logits / temperature)

    return aggregator.register_forward_hook(divide)
