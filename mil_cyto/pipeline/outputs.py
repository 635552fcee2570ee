"""The outputs stage: the run folder's files (the model with its recipe and temperature,
predictions.csv, attention.h5, plots, report.md) and, last, metrics.json, whose presence
marks a finished run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mil_cyto.checkpoint import model_recipe, save_model
from mil_cyto.config import TrainConfig
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.io import write_json, write_text
from mil_cyto.labels import GRADES
from mil_cyto.models import MILModel
from mil_cyto.pipeline.evaluation import Evaluation
from mil_cyto.pipeline.recipe import ModelParts, head_kwargs
from mil_cyto.pipeline.stage_store import RESUME_DIR
from mil_cyto.reporting import (
    plot_attention_examples,
    plot_confusion,
    plot_reliability,
    render_report,
    write_attention,
    write_predictions,
)
from mil_cyto.training import Predictions


def write_outputs(
    config: TrainConfig,
    run_dir: Path,
    parts: ModelParts,
    model: MILModel,
    result: Evaluation,
    boxes: dict[str, np.ndarray] | None,
) -> None:
    """Save ``model`` (a head on cached features is saved on ``parts.encoder``, the encoder
    that made them) with its recipe and ``result.temperature``, the test photos' (calibrated)
    predictions and attention, the confusion matrix, the reliability plot and a few photos
    with their attention."""
    saved = model if model.encoder is not None else MILModel(parts.encoder, model.aggregator)
    recipe = model_recipe(
        parts.spec,
        config.aggregator,
        head_kwargs(config),
        parts.encoder.out_dim,
        vars(parts.tiling),
        members=config.heads,
        temperature=result.temperature,
    )
    save_model(run_dir, saved, recipe)
    write_predictions(run_dir / "predictions.csv", result.rows, result.pred)
    write_attention(run_dir / "attention.h5", result.pred, result.coords, result.sizes)
    plot_confusion(run_dir / "confusion_matrix.png", result.metrics["confusion_matrix"])
    uncalibrated = result.pred.probs if result.uncalibrated is None else result.uncalibrated
    plot_reliability(
        run_dir / "reliability.png",
        result.pred.labels,
        uncalibrated,
        result.pred.probs,
        result.temperature,
    )
    examples = _example_photos(result.rows, result.pred, result.coords, boxes)
    if examples:
        plot_attention_examples(run_dir / "attention_examples.png", examples)


def finish_run(
    run_dir: Path, metrics: dict[str, Any], timing: dict[str, float], resolved: dict[str, Any]
) -> dict[str, Any]:
    """Write report.md and metrics.json (``metrics`` with the photos' ``pixel_size`` and
    ``timing_s``, returned) and remove the resume folder."""
    metrics = {**metrics, "pixel_size": resolved["pixel_size"], "timing_s": timing}
    write_text(run_dir / "report.md", render_report(metrics, resolved))
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    return metrics


def _example_photos(
    rows: list[ManifestRow],
    pred: Predictions,
    coords: dict[str, np.ndarray],
    boxes: dict[str, np.ndarray] | None,
    per_class: int = 1,
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One correctly and one wrongly called photo per abnormal grade, at most four in all."""
    chosen: list[int] = []
    for grade in range(1, len(GRADES)):
        idx = [i for i, r in enumerate(rows) if r.label == grade]
        right = [i for i in idx if pred.preds[i] == grade][:per_class]
        wrong = [i for i in idx if pred.preds[i] != grade][:1]
        chosen += right + wrong
    items = []
    for i in chosen[:4]:
        row = rows[i]
        title = (
            f"{row.image_id}: true {GRADES[row.label]}, predicted "
            f"{GRADES[int(pred.preds[i])]} (p={pred.probs[i].max():.2f})"
        )
        atypical = (boxes or {}).get(row.image_id, np.zeros((0, 4)))
        items.append((title, load_rgb(row.image), coords[row.image_id], pred.scores[i], atypical))
    return items
