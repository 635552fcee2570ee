"""The evaluation stage: the model on the test photos (never seen before), their metrics,
the temperature fitted on the validation photos and how calibrated the test probabilities
are before and after it (:mod:`mil_cyto.calibration`), and, where cell boxes exist, how well
the attention points at the atypical cells."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mil_cyto.calibration import (
    N_BINS,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    scaled_probabilities,
)
from mil_cyto.config import TrainConfig
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.localization import grid_localization
from mil_cyto.metrics import classification_metrics
from mil_cyto.pipeline.data import RunData
from mil_cyto.pipeline.encoder_training import TrainedEncoder
from mil_cyto.pipeline.heads import FittedHeads
from mil_cyto.pipeline.runtime import Runtime
from mil_cyto.training import Predictions, predict


@dataclass(frozen=True)
class Evaluation:
    """The test photos' ``rows`` and ``pred``ictions (calibrated probabilities), each
    photo's instance boxes ``coords`` ``(N_i, 4)`` and ``sizes`` ``(H, W)``, ``metrics``
    (metrics.json less ``timing_s``), the ``temperature`` the probabilities were divided by
    and the test photos' probabilities before it, ``uncalibrated`` ``(B, C)``."""

    rows: list[ManifestRow]
    pred: Predictions
    coords: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, ...]]
    metrics: dict[str, Any]
    temperature: float = 1.0
    uncalibrated: np.ndarray | None = None


def evaluate(
    config: TrainConfig,
    heads: FittedHeads,
    trained: TrainedEncoder,
    data: RunData,
    test_bags: Sequence[Any],
    runtime: Runtime,
) -> Evaluation:
    """Predict the test photos' ``test_bags`` with ``heads.model``, divide their logits by
    the temperature fitted on the validation photos (:func:`calibrate`) and score them:
    classification metrics, ``calibration``, then the records of the heads' and the
    encoder's training, then (where ``data`` has cell boxes) grid localization of the
    attention x bag size (1 = uniform) against the atypical cells of abnormal photos."""
    raw = predict(
        heads.model,
        test_bags,
        runtime.device,
        progress=runtime.progress,
        desc="testing",
        amp=config.amp,
    )
    pred, temperature, calibration = calibrate(config, heads, raw)
    metrics = classification_metrics(pred.labels, pred.preds)
    metrics["calibration"] = calibration
    metrics["training"] = heads.record
    if trained.pretraining is not None:
        metrics["pretraining"] = trained.pretraining
    if trained.self_training is not None:
        metrics["self_training"] = trained.self_training
    coords = {b.image_id: b.coords for b in test_bags}
    sizes = {b.image_id: tuple(b.size) for b in test_bags}
    boxes = data.boxes
    if boxes is not None:
        abnormal = [b.image_id for b in test_bags if b.label > 0]
        relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
        metrics["localization"] = grid_localization(
            coords, relative, sizes, boxes, abnormal, config.tile_size
        )
        metrics["localization"]["score"] = "attention x bag size (1 = uniform)"
    rows = data.split.take(data.rows)[2]
    return Evaluation(rows, pred, coords, sizes, metrics, temperature, raw.probs)


def calibrate(
    config: TrainConfig, heads: FittedHeads, pred: Predictions
) -> tuple[Predictions, float, dict[str, Any]]:
    """``pred`` (the test photos) with probabilities ``softmax(logits / T)``, ``T`` and
    metrics.json's ``calibration``: ``ece`` and ``brier`` of those probabilities,
    ``ece_uncalibrated`` and ``brier_uncalibrated`` of ``pred``'s own, ``temperature`` and
    ``n_val``, the validation photos it was fitted on.

    ``T`` is fitted on ``heads.val_logits``: the validation photos as the validation-selected
    heads predicted them before ``--refit`` trained on them (out of sample; see
    :mod:`mil_cyto.calibration`), never on the test photos. Without
    ``--temperature-scaling`` (or validation logits) ``T`` is 1 and ``pred`` is returned as
    it is. Dividing by ``T`` keeps every photo's predicted grade."""
    temperature, n_val = 1.0, 0
    if config.temperature_scaling and heads.val_logits is not None:
        assert heads.val_labels is not None
        temperature = fit_temperature(heads.val_logits, heads.val_labels)
        n_val = len(heads.val_labels)
    calibrated = pred
    if temperature != 1.0:
        assert pred.logits is not None
        calibrated = dataclasses.replace(
            pred,
            probs=scaled_probabilities(pred.logits, temperature),
            logits=(pred.logits / np.float32(temperature)).astype(np.float32),
        )
    summary = {
        "ece": expected_calibration_error(calibrated.probs, pred.labels),
        "brier": brier_score(calibrated.probs, pred.labels),
        "temperature": temperature,
        "ece_uncalibrated": expected_calibration_error(pred.probs, pred.labels),
        "brier_uncalibrated": brier_score(pred.probs, pred.labels),
        "n_val": n_val,
        "n_bins": N_BINS,
        "fitted_on": _fitted_on(config, n_val),
    }
    return calibrated, temperature, summary


def _fitted_on(config: TrainConfig, n_val: int) -> str:
    if not config.temperature_scaling:
        return "not fitted (--no-temperature-scaling)"
    if not n_val:
        return "not fitted (no validation photos)"
    before = " before the refit on training + validation photos" if config.refit else ""
    return f"validation photos, as the validation-selected heads predicted them{before}"
