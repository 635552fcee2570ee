"""``python -m mil_cyto.train``: photos -> bags -> attention-MIL -> a run folder.

With no arguments it builds (or reuses) the built-in synthetic Pap-smear set, trains on
CPU and evaluates on patient-disjoint test photos. See ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mil_cyto import __version__
from mil_cyto.checkpoint import model_recipe, save_model
from mil_cyto.config import TrainConfig, default_cache_dir, load_config_file, resolve_config
from mil_cyto.data.bags import load_bags
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.splits import fixed_split, train_val_test_split
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.devices import resolve_device
from mil_cyto.distributed import (
    DistContext,
    context_from_env,
    init_distributed,
    main_first,
    shutdown,
)
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features import BagStore, extract_to_store
from mil_cyto.features.extraction import DecodingProcesses
from mil_cyto.io import write_json, write_text
from mil_cyto.labels import GRADES
from mil_cyto.localization import centres_in_boxes, grid_localization, read_cell_boxes
from mil_cyto.losses import BAG_LOSSES, INSTANCE_LOSSES
from mil_cyto.metrics import classification_metrics, format_table
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.models.aggregators import INSTANCE_ATTENTION_HEADS
from mil_cyto.models.ensemble import HeadEnsemble
from mil_cyto.pretrain import PretrainConfig, pretrain_encoder
from mil_cyto.refine import PseudoLabels, RefineConfig, self_train
from mil_cyto.reporting import (
    plot_attention_examples,
    plot_confusion,
    render_report,
    write_attention,
    write_predictions,
)
from mil_cyto.resume import fingerprint, load_stage, save_stage
from mil_cyto.training import FeatureBag, FitConfig, fit, predict, seed_everything

RESUME_DIR = "resume"
"""Per-epoch checkpoint folder inside an unfinished run folder (removed when it finishes)."""


def resolve_data(config: TrainConfig, progress: bool) -> Path:
    """The data folder: ``config.data``, or the built-in synthetic set (built once, cached)."""
    if config.data:
        return Path(config.data).expanduser().resolve()
    from mil_cyto.data.synthetic import SynthConfig, generate_dataset

    synth = SynthConfig(n_images=config.synthetic_images, seed=config.synthetic_seed)
    target = default_cache_dir() / f"synthetic-n{synth.n_images}-s{synth.seed}"
    return generate_dataset(target, synth, workers=config.workers, progress=progress)


def _run_dir(config: TrainConfig) -> Path:
    out = Path(config.out or f"runs/mil-{datetime.now():%Y%m%d-%H%M%S}")
    if (out / "metrics.json").exists():
        raise MilCytoError(f"{out} already holds a finished run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _decoding(config: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    """A pool of ``--decode-processes`` decoding processes for one stage, or None (threads)."""
    if config.decode_processes > 0:
        return DecodingProcesses(config.decode_processes)
    return contextlib.nullcontext()


def _feature_bags(
    rows: list[ManifestRow],
    encoder: Any,
    config: TrainConfig,
    run_dir: Path,
    tiling: TilingConfig,
    device: torch.device,
    progress: bool,
    pretrained: str | None = None,
    known_coords: dict[str, np.ndarray] | None = None,
) -> list[FeatureBag]:
    """Cached features of every photo (extracted once into the bag store); ``pretrained``:
    the digest of a self-supervised encoder's weights, part of the store's provenance;
    ``known_coords``: instance boxes already found for some photos (not searched again)."""
    store_path = Path(config.features) if config.features else run_dir / "features.h5"
    provenance = {
        "encoder": config.encoder,
        "encoder_kwargs": config.encoder_kwargs or {},
        "weights": config.weights,
        "weights_cache": config.weights_cache,
        "mil_cyto_version": __version__,
    }
    if pretrained is not None:
        provenance["pretrained_sha256"] = pretrained
    with _decoding(config) as pool:
        extract_to_store(
            rows,
            encoder,
            store_path,
            tiling=tiling,
            provenance=provenance,
            device=device,
            workers=config.workers,
            progress=progress,
            known_coords=known_coords,
            decoder=pool,
        )
    return stored_bags(store_path, rows)


def stored_bags(store_path: Path, rows: Sequence[ManifestRow]) -> list[FeatureBag]:
    """The cached features of ``rows``' photos in the bag store at ``store_path``, in order,
    as feature bags with their labels from the manifest."""
    with BagStore(store_path) as store:
        bags = []
        for row in rows:
            feats, coords = store[row.image_id]
            bags.append(
                FeatureBag(
                    row.image_id, row.patient_id, row.label, feats, coords, store.size(row.image_id)
                )
            )
    return bags


PRETRAINED_STAGE = "pretrained_encoder"  # in RESUME_DIR: a killed run skips pretraining


def _pretraining_fingerprint(
    config: TrainConfig, train_ids: list[str], tiling: TilingConfig
) -> str:
    """What the pretrained encoder depends on: encoder, pretraining settings, seed, threads,
    instances and the training photos."""
    keys = ("encoder", "encoder_kwargs", "weights", "weights_cache", "pretrain")
    settings = {k: getattr(config, k) for k in keys}
    settings.update(epochs=config.pretrain_epochs, seed=config.seed, threads=config.threads)
    settings["device"] = config.device
    return fingerprint({"settings": settings, "tiling": asdict(tiling), "train": train_ids})


def _self_training_fingerprint(
    config: TrainConfig, train_ids: list[str], val_ids: list[str], tiling: TilingConfig
) -> str:
    """What the self-trained encoder depends on: the pretrained one, the first head (its
    settings and the validation photos that choose its epoch) and the self-training
    settings."""
    fit_settings = asdict(create_fit_config(config))
    settings = {
        "pretraining": _pretraining_fingerprint(config, train_ids, tiling),
        "head": [config.aggregator, head_kwargs(config), fit_settings],
        "refine": [config.refine_epochs, config.refine_top_k, config.refine_rounds],
        "val": val_ids,
    }
    return fingerprint(settings)


def _restore_encoder(
    encoder: torch.nn.Module, run_dir: Path, stage_name: str, key: str
) -> dict[str, Any] | None:
    """Load the encoder a killed run already trained in stage ``stage_name`` (pretraining or
    self-training), and torch's RNG state after it, so the rest of the run is the same;
    returns the stage's record, or None."""
    stage = load_stage(run_dir / RESUME_DIR, stage_name, key)
    if stage is None:
        return None
    tensors, record = stage
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in tensors.items() if k != "rng"})
    torch.set_rng_state(tensors["rng"])
    return record


def _save_encoder(
    encoder: torch.nn.Module, run_dir: Path, stage_name: str, record: Any, key: str
) -> None:
    """Keep a trained encoder and torch's RNG state for :func:`_restore_encoder`."""
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors["rng"] = torch.get_rng_state()
    save_stage(run_dir / RESUME_DIR, stage_name, tensors, record, key)


def weights_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 of a module's weights (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_encoder_training(config: TrainConfig, ctx: DistContext) -> None:
    """Refuse what pretraining and self-training cannot do: an unknown method, or several
    processes."""
    if config.pretrain not in ("none", "simclr"):
        raise MilCytoError(f"pretrain {config.pretrain!r}: use none or simclr")
    if ctx.is_distributed:
        raise MilCytoError(
            "--pretrain and --refine-epochs run in one process; train without torchrun, or "
            "use --pretrain none --refine-epochs 0"
        )


def _pretrain(
    encoder: torch.nn.Module,
    train_bags: list[Any],
    config: TrainConfig,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Self-supervised pretraining of ``encoder`` on the training photos' tiled bags
    (:mod:`mil_cyto.pretrain`); returns what metrics.json records of it, with the SHA-256 of
    the encoder's weights afterwards."""
    tiles = torch.from_numpy(np.concatenate([b.tiles for b in train_bags]))
    settings = PretrainConfig(epochs=config.pretrain_epochs, seed=config.seed)
    losses = pretrain_encoder(encoder, tiles, settings, device, progress=progress)
    return {
        "method": config.pretrain,
        "instances": len(tiles),
        "loss_per_epoch": losses,
        "encoder_sha256": weights_digest(encoder),
    }


SELF_TRAINED_STAGE = "self_trained_encoder"  # in RESUME_DIR: a killed run skips both stages


def _self_train(
    encoder: torch.nn.Module,
    train_tiled: list[Any],
    val_tiled: list[Any],
    config: TrainConfig,
    boxes: dict[str, np.ndarray] | None,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Self-training of ``encoder`` on the MIL head's pseudo-labels (:mod:`mil_cyto.refine`),
    ``config.refine_rounds`` rounds, each with a new first head on the features the last
    round made; returns what metrics.json records of it (the last round's figures, each
    round's under ``rounds`` when there are several), with the SHA-256 of the encoder's
    weights and, where cell boxes exist (never used to train), the share of pseudo-abnormal
    instances whose centre lies in an atypical cell of their photo."""
    rounds = []
    for round_index in range(config.refine_rounds):
        head = create_head(config, encoder.out_dim)
        seed = _derived_seed(config, round_index)
        settings = RefineConfig(config.refine_epochs, config.refine_top_k, seed=seed)
        record, pseudo = self_train(
            encoder,
            head,
            train_tiled,
            val_tiled,
            create_fit_config(config, seed=seed),
            settings,
            len(GRADES),
            device,
            progress=progress,
        )
        if boxes is not None:
            record["pseudo_abnormal_on_atypical_cells"] = _share_on_atypical_cells(
                pseudo, train_tiled, boxes
            )
        rounds.append(record)
    record = {**rounds[-1], "encoder_sha256": weights_digest(encoder)}
    if len(rounds) > 1:
        record["rounds"] = rounds
    return record


def _share_on_atypical_cells(
    pseudo: PseudoLabels, train_tiled: list[Any], boxes: dict[str, np.ndarray]
) -> float | None:
    """The share of pseudo-abnormal instances whose centre lies in an atypical cell's box of
    their photo (a diagnostic from ``cells.csv``; never used to train); None without any."""
    positive = pseudo.labels.numpy() > 0
    hits = [
        centres_in_boxes(train_tiled[p].coords[[i]], boxes.get(train_tiled[p].image_id, []))[0]
        for p, i in zip(pseudo.photo[positive], pseudo.instance[positive], strict=True)
    ]
    return float(np.mean(hits)) if hits else None


def head_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the MIL head ``config`` names (saved in the model recipe)."""
    kwargs: dict[str, Any] = {"bag_norm": config.bag_norm}
    if config.aggregator in INSTANCE_ATTENTION_HEADS:
        kwargs["instance_attention"] = config.instance_attention
        if config.instance_attention and config.attention_threshold > 0:
            kwargs["attention_threshold"] = config.attention_threshold
    kwargs.update(config.aggregator_kwargs or {})
    return kwargs


def create_head(config: TrainConfig, in_dim: int) -> torch.nn.Module:
    """The MIL head ``config`` names, for ``in_dim``-sized tile features."""
    return create_aggregator(
        config.aggregator, in_dim=in_dim, n_classes=len(GRADES), **head_kwargs(config)
    )


def create_fit_config(config: TrainConfig, **overrides: Any) -> FitConfig:
    """``config``'s optimisation settings as a :class:`FitConfig`, with ``overrides``."""
    values = {f.name: getattr(config, f.name) for f in fields(FitConfig) if hasattr(config, f.name)}
    return FitConfig(**{**values, **overrides})


def run_training(config: TrainConfig, *, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train, select on validation, evaluate on test and write the run folder.

    Returns the run folder and its metrics.
    """
    timing: dict[str, float] = {}
    clock = time.perf_counter()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    ctx, device = init_distributed(resolve_device(config.device))  # torchrun: DDP training
    progress = progress and ctx.is_main
    run_dir = _run_dir(config)

    with main_first(ctx):
        data_dir = resolve_data(config, progress)
    timing["data (build or reuse)"] = time.perf_counter() - clock
    rows = read_manifest(data_dir / "manifest.csv", label_column=config.label_column)
    cells_path = Path(config.cells) if config.cells else data_dir / "cells.csv"
    boxes = read_cell_boxes(cells_path) if cells_path.is_file() else None
    split = fixed_split([r.split for r in rows], where=str(data_dir / "manifest.csv"))
    if split is None:  # no 'split' column: the patient-disjoint split
        split = train_val_test_split(
            [r.label for r in rows], [r.patient_id for r in rows], seed=config.split_seed
        )
    resolved = {**config.to_dict(), "data_resolved": str(data_dir), "mil_cyto_version": __version__}
    if ctx.is_main:
        write_json(run_dir / "config.json", resolved)
        write_json(
            run_dir / "splits.json",
            {
                name: [rows[i].image_id for i in getattr(split, name)]
                for name in ("train", "val", "test")
            },
        )

    tiling = TilingConfig(config.tile_size, config.stride, config.min_tissue, config.instances)
    spec = EncoderSpec(
        config.encoder, config.weights, config.weights_cache, config.encoder_kwargs or {}
    )
    encoder = create_encoder(spec)
    aggregator = create_head(config, encoder.out_dim)
    tiled: list[Any] | None = None  # fine-tuning: every photo's tiles, cut once
    if config.mode == "finetune":
        step = time.perf_counter()
        with _decoding(config) as pool:
            tiled = load_bags(rows, tiling, workers=config.workers, progress=progress, pool=pool)
        timing["tiling photos"] = time.perf_counter() - step
    pretraining: dict[str, Any] | None = None
    self_training: dict[str, Any] | None = None
    known_coords: dict[str, np.ndarray] = {}  # instance boxes found so far, for extraction
    train_rows, val_rows, _ = split.take(rows)
    train_ids, val_ids = [r.image_id for r in train_rows], [r.image_id for r in val_rows]
    train_tiled: list[Any] | None = None  # the training photos' instances, while needed
    if config.pretrain != "none" or config.refine_epochs > 0:
        _check_encoder_training(config, ctx)
    if config.refine_epochs > 0:  # a killed run that finished self-training skips both stages
        refine_key = _self_training_fingerprint(config, train_ids, val_ids, tiling)
        restored = _restore_encoder(encoder, run_dir, SELF_TRAINED_STAGE, refine_key)
        if restored is not None:
            pretraining, self_training = restored["pretraining"], restored["self_training"]
    if config.pretrain != "none" and self_training is None:
        step = time.perf_counter()
        key = _pretraining_fingerprint(config, train_ids, tiling)
        pretraining = _restore_encoder(encoder, run_dir, PRETRAINED_STAGE, key)
        if pretraining is None:
            if tiled is not None:
                train_tiled = split.take(tiled)[0]
            else:  # frozen mode cuts no tiles of its own: the training photos' only
                with _decoding(config) as pool:
                    train_tiled = load_bags(
                        train_rows, tiling, workers=config.workers, progress=progress, pool=pool
                    )
            pretraining = _pretrain(encoder, train_tiled, config, device, progress)
            known_coords = {b.image_id: b.coords for b in train_tiled}
            _save_encoder(encoder, run_dir, PRETRAINED_STAGE, pretraining, key)
        timing["pretraining"] = time.perf_counter() - step
    if config.refine_epochs > 0 and self_training is None:
        step = time.perf_counter()
        with _decoding(config) as pool:
            if train_tiled is None:
                train_tiled = load_bags(
                    train_rows, tiling, workers=config.workers, progress=progress, pool=pool
                )
            val_tiled = load_bags(
                val_rows, tiling, workers=config.workers, progress=progress, pool=pool
            )
        self_training = _self_train(
            encoder, train_tiled, val_tiled, config, boxes, device, progress
        )
        known_coords.update({b.image_id: b.coords for b in [*train_tiled, *val_tiled]})
        del val_tiled
        stages = {"pretraining": pretraining, "self_training": self_training}
        _save_encoder(encoder, run_dir, SELF_TRAINED_STAGE, stages, refine_key)
        timing["self-training"] = time.perf_counter() - step
    del train_tiled  # frozen mode: the crops go (~0.3 GB by default), their boxes stay
    pretrained = (self_training or pretraining or {}).get("encoder_sha256")
    if tiled is not None:
        bags: list[Any] = tiled
        model = MILModel(encoder, aggregator)
    else:
        step = time.perf_counter()
        for p in encoder.parameters():
            p.requires_grad_(False)
        with main_first(ctx):
            bags = _feature_bags(
                rows, encoder, config, run_dir, tiling, device, progress, pretrained, known_coords
            )
        model = MILModel(None, aggregator)
        timing["feature extraction"] = time.perf_counter() - step

    train_bags, val_bags, test_bags = split.take(bags)
    heads, records = [], []
    timing["training"] = 0.0
    cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
    for index in range(config.heads):
        # head 0: the one built above; head k: its own seed for init and dropout, so it is
        # the same head whatever came before it
        with torch.random.fork_rng(devices=cuda):
            if index > 0:
                torch.manual_seed(_derived_seed(config, index))
                model = MILModel(model.encoder, create_head(config, encoder.out_dim))
            model, record, seconds = _fit_head(
                model, train_bags, val_bags, config, index, run_dir, device, ctx, progress
            )
        heads.append(model.aggregator)
        records.append(record)
        timing["training"] += seconds
    training = dict(records[0])  # a copy: it gains the list that holds records[0]
    if len(heads) > 1:
        model = MILModel(model.encoder, HeadEnsemble(heads))
        training["members"] = records
    if not ctx.is_main:  # rank 0 alone tests and writes the run folder
        return run_dir, {}

    step = time.perf_counter()
    test_rows = split.take(rows)[2]
    pred = predict(model, test_bags, device, progress=progress, desc="testing", amp=config.amp)
    metrics = classification_metrics(pred.labels, pred.preds)
    metrics["training"] = training
    if pretraining is not None:
        metrics["pretraining"] = pretraining
    if self_training is not None:
        metrics["self_training"] = self_training
    coords = {b.image_id: b.coords for b in test_bags}
    sizes = {b.image_id: tuple(b.size) for b in test_bags}
    if boxes is not None:
        abnormal = [b.image_id for b in test_bags if b.label > 0]
        relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
        metrics["localization"] = grid_localization(
            coords, relative, sizes, boxes, abnormal, config.tile_size
        )
        metrics["localization"]["score"] = "attention x bag size (1 = uniform)"
    timing["testing"] = time.perf_counter() - step

    step = time.perf_counter()
    if model.encoder is None:  # the trained head (refitted or not) on the encoder it saw
        model = MILModel(encoder, model.aggregator)
    kwargs = head_kwargs(config)
    recipe = model_recipe(
        spec, config.aggregator, kwargs, encoder.out_dim, vars(tiling), members=config.heads
    )
    save_model(run_dir, model, recipe)
    write_predictions(run_dir / "predictions.csv", test_rows, pred)
    write_attention(run_dir / "attention.h5", pred, coords, sizes)
    plot_confusion(run_dir / "confusion_matrix.png", metrics["confusion_matrix"])
    examples = _example_photos(test_rows, pred, coords, boxes)
    if examples:
        plot_attention_examples(run_dir / "attention_examples.png", examples)
    timing["writing outputs"] = time.perf_counter() - step
    timing["total"] = time.perf_counter() - clock
    metrics["timing_s"] = timing
    write_text(run_dir / "report.md", render_report(metrics, resolved))
    write_json(run_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    return run_dir, metrics


def _example_photos(
    rows: list[ManifestRow],
    pred: Any,
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


def _derived_seed(config: TrainConfig, index: int) -> int:
    """The seed of the ``index``-th self-training round (``--refine-rounds``) or ensemble head
    (``--heads``), counted from 0, which takes the run's seed."""
    return config.seed + 1000 * index


def _fit_head(
    model: MILModel,
    train_bags: Sequence[Any],
    val_bags: Sequence[Any],
    config: TrainConfig,
    index: int,
    run_dir: Path,
    device: torch.device,
    ctx: DistContext,
    progress: bool,
) -> tuple[MILModel, dict[str, Any], float]:
    """Fit ``model``'s head (the ``index``-th of ``--heads``) with its epoch chosen on
    ``val_bags``, then refit it (``--refit``). Returns the model kept, what metrics.json
    records of the fit (``best_epoch``, ``history``, ``refit``) and the seconds it took.

    A killed run, rerun with the same ``--out``, resumes (each head in a folder of its own).
    """
    folder = run_dir / RESUME_DIR / (f"head-{index}" if index else "")
    seed = _derived_seed(config, index)
    fit_config = create_fit_config(config, seed=seed, resume_dir=str(folder))
    untrained = copy.deepcopy(model.aggregator) if config.refit else None
    desc = f"training head {index + 1}/{config.heads}" if config.heads > 1 else "training"
    result = fit(
        model, train_bags, val_bags, fit_config, device, progress=progress, dist_ctx=ctx, desc=desc
    )
    record: dict[str, Any] = {"best_epoch": result.best_epoch, "history": result.history}
    if index:
        record["seed"] = seed
    seconds = result.seconds
    if untrained is not None:
        model = MILModel(model.encoder, untrained)
        photos = [*train_bags, *val_bags]
        record["refit"], more = _refit(
            model, photos, result.best_epoch, config, seed, folder, device, ctx
        )
        seconds += more
    return model, record, seconds


def _refit(
    model: MILModel,
    photos: Sequence[Any],
    epochs: int,
    config: TrainConfig,
    seed: int,
    resume_folder: Path,
    device: torch.device,
    ctx: DistContext,
) -> tuple[dict[str, Any], float]:
    """Train ``model`` (the head as it was before the first fit) again on ``photos`` (the
    training and validation photos) for the ``epochs`` that validation chose, on a schedule of
    that length; its last weights are the model. Returns ``{"epochs", "photos"}`` and the
    seconds it took. Nothing is selected here and the test photos stay unseen. Test accuracy
    over the validation-chosen head: +0.023 over 20 heads on cached features, +0.010 over ten
    full default runs (docs/cin1_gap.md)."""
    # resumable like the first fit, in a folder of its own (its own fingerprint)
    folder = str(resume_folder / "refit")
    refit_config = create_fit_config(
        config, seed=seed, epochs=max(1, epochs), resume_dir=folder, keep="last"
    )
    result = fit(model, photos, [], refit_config, device, progress=False, dist_ctx=ctx)
    return {"epochs": refit_config.epochs, "photos": len(photos)}, result.seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mil_cyto.train",
        description="Train and evaluate an attention-MIL model on photos with image-level "
        "grades (normal / CIN1 / CIN2+). No arguments: the built-in synthetic set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = TrainConfig()
    add = parser.add_argument
    add("--config", type=Path, help="JSON config (e.g. a run's config.json); flags override it")
    add("--data", help="folder with manifest.csv (default: built-in synthetic set)")
    add("--out", help="run folder (default: runs/mil-<timestamp>)")
    add("--label-column", help="grade column to learn: histology, cytology or label")
    add("--cells", help="cell annotations CSV for localization (default: DATA/cells.csv)")
    add("--synthetic-images", type=int, help=f"photos in the synthetic set ({d.synthetic_images})")
    add("--encoder", help=f"registered encoder or any timm model name ({d.encoder})")
    add("--weights", help="local weights file for a timm encoder (safetensors or .pth)")
    add("--weights-cache", help="existing Hugging Face cache folder holding the weights")
    add(
        "--mode",
        choices=["finetune", "frozen"],
        help=f"train the encoder or cache features ({d.mode})",
    )
    add("--features", help="bag store path in frozen mode (default: RUN/features.h5)")
    add(
        "--pretrain",
        choices=["none", "simclr"],
        help="self-supervised encoder pretraining on the training photos' instances, before "
        "the head sees a grade (simclr; none when --weights or --weights-cache is given)",
    )
    add("--pretrain-epochs", type=int, help=f"its passes over the instances ({d.pretrain_epochs})")
    add(
        "--refine-epochs",
        type=int,
        help="self-training after pretraining (frozen mode): a first head's attention labels "
        "the training photos' instances, the encoder trains on them for this many epochs, the "
        "head is fitted anew (5 after --pretrain simclr in frozen mode, else 0 = off; "
        "mil_cyto.refine)",
    )
    add(
        "--refine-top-k",
        type=int,
        help=f"instances per abnormal training photo labelled with its grade ({d.refine_top_k})",
    )
    add(
        "--refine-rounds",
        type=int,
        help="self-training rounds: each round's head labels the instances by the features the "
        f"last round made ({d.refine_rounds})",
    )
    add(
        "--radial-rings",
        type=int,
        help="append each instance's radial optical-density profile in this many rings around "
        "its centre to the encoder's features (16 for --instances cells, 0 = none; "
        "docs/model_zoo.md)",
    )
    add("--aggregator", help=f"MIL head, one of mil_cyto.models.AGGREGATORS ({d.aggregator})")
    add(
        "--bag-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise tile features within each photo (default on)",
    )
    add(
        "--instance-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"ABMIL heads: attention from the per-tile grade logits ({d.instance_attention})",
    )
    add(
        "--attention-threshold",
        type=int,
        help="with --instance-attention: the attention logit is the tile's logit for grade >= "
        f"K (1 = atypical vs normal; 0 = the sum over thresholds) ({d.attention_threshold})",
    )
    add(
        "--instance-loss",
        choices=INSTANCE_LOSSES,
        help=f"per-tile MIL loss on abnormal photos ({d.instance_loss})",
    )
    add("--instance-loss-weight", type=float, help=f"its weight ({d.instance_loss_weight})")
    add("--tile-size", type=int, help=f"tile side in pixels ({d.tile_size})")
    add("--stride", type=int, help="grid stride in pixels (the tile size)")
    add("--min-tissue", type=float, help=f"minimum tissue share of a kept tile ({d.min_tissue})")
    add(
        "--instances",
        choices=["grid", "cells"],
        help=f"grid tiles, or one crop centred on each detected nucleus ({d.instances})",
    )
    add(
        "--epochs",
        type=int,
        help="passes of the head over the training photos (48 in frozen mode, 16 fine-tuning)",
    )
    add(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after choosing the epoch on the validation photos, train the head again on "
        "training + validation photos for that many epochs and keep it (default on in frozen "
        "mode, off when fine-tuning)",
    )
    add(
        "--heads",
        type=int,
        help="frozen mode: fit this many heads with different seeds (each chooses its own "
        "epoch, then is refitted) and keep the mean of their probabilities and attention; "
        f"steadier than one head ({d.heads})",
    )
    add("--batch-bags", type=int, help=f"photos per optimisation step ({d.batch_bags})")
    add("--lr", type=float, help=f"peak learning rate ({d.lr})")
    add(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the loss by inverse class frequency (default on)",
    )
    add(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random rotations, flips and stain gain (default on)",
    )
    add(
        "--balanced-sampling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw training photos class-balanced each epoch (default off)",
    )
    add("--loss", choices=BAG_LOSSES, help=f"bag loss ({d.loss})")
    add("--max-tiles", type=int, help="random tiles per photo per training step (0 = all)")
    add("--chunk", type=int, help="encoder chunk size when fine-tuning (0 = one pass)")
    add(
        "--checkpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gradient checkpointing of encoder chunks when fine-tuning (default off)",
    )
    add("--seed", type=int, help=f"training seed ({d.seed})")
    add("--split-seed", type=int, help=f"seed of the patient split ({d.split_seed})")
    add("--device", help=f"auto, cpu or cuda ({d.device})")
    add(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 mixed precision on CUDA (default on; no effect on CPU)",
    )
    add("--workers", type=int, help=f"threads for decoding photos ({d.workers})")
    add(
        "--decode-processes",
        type=int,
        help="decode photos on this many processes instead of --workers threads (for a GPU "
        "machine, where decoding and nucleus detection are the bottleneck; 0 = threads)",
    )
    add("--threads", type=int, help="torch CPU threads (0 = torch's default)")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def summary(run_dir: Path, metrics: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["", f"run folder: {run_dir}", "", format_table(metrics), ""]
    loc = metrics.get("localization")
    if loc and loc.get("instance_auroc") is not None:
        lines.append(
            f"localization: instance AUROC {loc['instance_auroc']:.3f}, pointing game "
            f"{loc['pointing_game']:.3f} ({loc['n_images']} abnormal test photos, "
            f"{loc.get('tiles', 'the instances')})"
        )
    timing = metrics["timing_s"]
    lines.append("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    lines.append(f"read first: {run_dir / 'report.md'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    try:
        file_values = load_config_file(args.config) if args.config else {}
        config = resolve_config(file_values, cli)
        run_dir, metrics = run_training(config, progress=not args.quiet)
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown(context_from_env())
    if metrics:
        print(summary(run_dir, metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
