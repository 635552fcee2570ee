"""One training run: the stages of :mod:`mil_cyto.pipeline`, in order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mil_cyto.config import TrainConfig
from mil_cyto.data.bags import Bag
from mil_cyto.data.splits import Split
from mil_cyto.pipeline.data import load_data, tile_photos, write_run_start
from mil_cyto.pipeline.encoder_training import train_encoder
from mil_cyto.pipeline.evaluation import evaluate
from mil_cyto.pipeline.features import extract_features
from mil_cyto.pipeline.heads import fit_heads
from mil_cyto.pipeline.outputs import finish_run, write_outputs
from mil_cyto.pipeline.recipe import create_model_parts
from mil_cyto.pipeline.runtime import start_runtime
from mil_cyto.pipeline.timing import StageTimer


def run_training(
    config: TrainConfig, *, progress: bool = True, split: Split | None = None
) -> tuple[Path, dict[str, Any]]:
    """Train, select on validation, evaluate on test and write the run folder.

    ``split``: the photos' train / val / test parts (indexes of the manifest's rows) in place
    of the manifest's or the default patient split (``mil_cyto.compare`` passes its folds).

    Returns the run folder and its metrics (empty on torchrun ranks other than 0, which
    train only).
    """
    timer = StageTimer()
    with timer.stage("data (build or reuse)"):
        runtime = start_runtime(config, progress)
        data = load_data(config, runtime)
        if split is not None:
            data = dataclasses.replace(data, split=split)
    write_run_start(runtime, data)
    parts = create_model_parts(config)
    tiled: list[Bag] | None = None  # fine-tuning: every photo's tiles, cut once
    if config.mode == "finetune":
        with timer.stage("tiling photos"):
            tiled = tile_photos(config, parts.tiling, runtime.progress, data.rows)[0]
    trained = train_encoder(config, data, parts.encoder, parts.tiling, tiled, runtime, timer)
    bags: Sequence[Any] | None = tiled  # the heads' input: tiles, or else cached features
    if bags is None:
        with timer.stage("feature extraction"):
            bags = extract_features(config, data.rows, parts, trained, runtime)
    train_bags, val_bags, test_bags = data.split.take(bags)
    with timer.stage("training"):
        heads = fit_heads(config, parts, tiled is not None, train_bags, val_bags, runtime)
    if not runtime.ctx.is_main:  # rank 0 alone tests and writes the run folder
        return runtime.run_dir, {}
    with timer.stage("testing"):
        result = evaluate(config, heads, trained, data, test_bags, runtime)
    with timer.stage("writing outputs"):
        write_outputs(config, runtime.run_dir, parts, heads.model, result, data.boxes)
    metrics = finish_run(runtime.run_dir, result.metrics, timer.seconds(), data.resolved)
    return runtime.run_dir, metrics
