"""``python -m mil_cyto.compare``: every method on the same patient-grouped folds.

Methods are MIL aggregators on grid tiles (``abmil``) or on cell-centred crops
(``abmil@cells``; ``sil`` is neural single-instance learning), instance classifiers by
gradient boosting on the same features (``sil_gbm``: photo grades copied to the instances;
``pseudo_gbm``: instances labelled by the default attention head's pseudo-labels; see
:mod:`mil_cyto.instance_learning`), whole-image CNNs (``cnn:densenet121``) and
``train-default``, the whole default ``python -m mil_cyto.train`` run (pretraining,
self-training, head ensemble) on each fold's split; ``--list`` prints them all.
MIL and instance methods share, per fold and instance type, one small CNN encoder
fine-tuned on that fold's training photos and then frozen (computed once for every fold
when it has no fold-dependent training; or the features of a bag store, ``features``);
each is charged that whole encoder's CPU time (what running it alone would cost) plus its
own head's.
Writes ``comparison.csv`` and ``comparison.md`` (one row per method: mean +- sd over folds,
a patient-level bootstrap 95% interval on the pooled test photos, CPU seconds and peak
memory), the reference study's rows for context, and each fold's result under ``folds/``
(a rerun skips folds already done).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mil_cyto import __version__
from mil_cyto.baseline import BaselineConfig, load_resized, run_baseline
from mil_cyto.calibration import probability_metrics
from mil_cyto.config import TrainConfig
from mil_cyto.data.bags import Bag, load_bags
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.splits import Split, fixed_split, patient_folds
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.instance_learning import (
    InstanceConfig,
    attention_labels,
    copied_labels,
    fit_instance_model,
)
from mil_cyto.io import atomic_path, write_json, write_text
from mil_cyto.labels import GRADES
from mil_cyto.localization import grid_localization, read_cell_boxes
from mil_cyto.metrics import classification_metrics
from mil_cyto.models import AGGREGATORS, MILModel, create_aggregator
from mil_cyto.models.whole_image import STUDY_ARCHS
from mil_cyto.pipeline.features import stored_bags
from mil_cyto.pipeline.recipe import create_fit_config, create_head
from mil_cyto.pretrain import PretrainConfig, pretrain_encoder
from mil_cyto.profiling import measure
from mil_cyto.reference import REFERENCE_ROWS
from mil_cyto.training import (
    FeatureBag,
    FitConfig,
    embed_bags,
    fit,
    predict,
    seed_everything,
)

INSTANCE_METHODS = ("sil_gbm", "pseudo_gbm")
"""Instance classifiers by gradient boosting (:mod:`mil_cyto.instance_learning`)."""
TRAIN_DEFAULT = "train-default"
"""The method that runs ``python -m mil_cyto.train``'s whole default on each fold; opt-in
(minutes per fold), so not among :data:`DEFAULT_METHODS`."""

DEFAULT_METHODS = [
    *AGGREGATORS.names(),
    *(f"{name}@cells" for name in AGGREGATORS.names()),
    *INSTANCE_METHODS,
    *(f"{name}@cells" for name in INSTANCE_METHODS),
    "cnn:resnet18",
    "cnn:mobilenetv3_large",
    "cnn:densenet121",
]


@dataclass
class Budget:
    """How much each method may train (a preset; every field has a flag)."""

    folds: int = 5
    encoder: str = "smallcnn"
    encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"width": 16, "out_dim": 128})
    tile_size: int = 96
    stride: int = 96
    pretrain_epochs: int = 0  # > 0: SimCLR on the fold's training instances first, no labels
    encoder_epochs: int = 16  # 0: the encoder stays at its seeded random init (or pretrained)
    encoder_max_tiles: int = 0  # tiles per photo per encoder-training step (0 = all)
    radial_rings: int = 0  # > 0: each tile's radial optical-density profile beside its features
    mil_epochs: int = 40
    mil_batch_bags: int = 8
    mil_lr: float = 1e-3
    cnn_size: int = 512
    cnn_epochs: int = 300
    cnn_batch_size: int = 8
    cnn_lr: float = 0.01
    gbm_max_iter: int = 100  # boosting iterations of the instance classifiers
    pseudo_top_k: int = 3  # instances per abnormal training photo the pseudo-labels take


BUDGETS: dict[str, Budget] = {
    # the study's CNN protocol; MIL heads on frozen features
    "full": Budget(),
    # minutes on 2 CPU cores: 3 folds, small CNN inputs and few epochs
    "quick": Budget(
        folds=3,
        encoder_epochs=4,
        encoder_max_tiles=48,
        mil_epochs=12,
        cnn_size=192,
        cnn_epochs=3,
        cnn_batch_size=16,
        cnn_lr=1e-3,
    ),
}


@dataclass(frozen=True)
class Method:
    """``kind`` ``mil`` (``name`` an aggregator, ``instances`` grid or cells), ``instance``
    (``name`` one of :data:`INSTANCE_METHODS`), ``cnn`` or ``pipeline``
    (:data:`TRAIN_DEFAULT`)."""

    label: str
    kind: str
    name: str
    instances: str = "grid"


def available_methods() -> list[str]:
    """Every method name ``--methods`` accepts."""
    mil = [*AGGREGATORS.names(), *INSTANCE_METHODS]
    return [
        *mil,
        *(f"{m}@cells" for m in mil),
        *(f"cnn:{a}" for a in STUDY_ARCHS),
        TRAIN_DEFAULT,
    ]


def parse_method(label: str) -> Method:
    """``abmil``, ``abmil@cells``, ``sil_gbm@cells``, ``cnn:resnet18`` (any timm name after
    ``cnn:``), ``train-default``."""
    if label.startswith("cnn:"):
        return Method(label, "cnn", label[4:])
    if label == TRAIN_DEFAULT:
        return Method(label, "pipeline", label)
    name, _, instances = label.partition("@")
    instances = instances or "grid"
    if name in INSTANCE_METHODS and instances in ("grid", "cells"):
        return Method(label, "instance", name, instances)
    if name not in AGGREGATORS or instances not in ("grid", "cells"):
        raise MilCytoError(
            f"unknown method {label!r}; see `python -m mil_cyto.compare --list` "
            f"({', '.join(available_methods()[:6])}, ...)"
        )
    return Method(label, "mil", name, instances)


def _slug(label: str) -> str:
    return label.replace(":", "-").replace("@", "-at-")


def _tiling(budget: Budget, instances: str) -> TilingConfig:
    return TilingConfig(budget.tile_size, budget.stride, 0.05, instances)


def fold_features(
    tile_bags: list[Bag], split: Split, budget: Budget, seed: int
) -> list[FeatureBag]:
    """The fold's shared tile features: a small CNN, first pretrained with SimCLR on the fold's
    training photos' instances when ``pretrain_epochs`` > 0 (as `mil_cyto.train` does by
    default), then fine-tuned end to end on them (with the head and instance loss of
    `mil_cyto.train`'s defaults, model chosen on validation; ``encoder_epochs`` = 0 skips
    this), then frozen and applied to every photo. Test photos never touch the encoder's
    training."""
    seed_everything(seed)
    kwargs = dict(budget.encoder_kwargs)
    if budget.radial_rings > 0:  # as mil_cyto.train --radial-rings (default for nucleus crops)
        kwargs["radial_rings"] = budget.radial_rings
    encoder = create_encoder(EncoderSpec(budget.encoder, kwargs=kwargs))
    if budget.pretrain_epochs > 0:
        train_tiles = np.concatenate([b.tiles for b in split.take(tile_bags)[0]])
        settings = PretrainConfig(epochs=budget.pretrain_epochs, seed=seed)
        pretrain_encoder(
            encoder, torch.from_numpy(train_tiles), settings, torch.device("cpu"), progress=False
        )
    if budget.encoder_epochs > 0:
        defaults = TrainConfig()  # the head and instance loss of `python -m mil_cyto.train`
        model = MILModel(encoder, create_head(defaults, encoder.out_dim))
        config = create_fit_config(
            defaults, epochs=budget.encoder_epochs, seed=seed, max_tiles=budget.encoder_max_tiles
        )
        fit(
            model,
            *split.take(tile_bags)[:2],
            config,
            torch.device("cpu"),
            progress=False,
        )
    return embed_bags(encoder, tile_bags, torch.device("cpu"), batch_size=256)


def _run_mil(
    method: Method,
    bags: list[FeatureBag],
    split: Split,
    budget: Budget,
    boxes: dict[str, np.ndarray] | None,
    seed: int,
) -> dict[str, Any]:
    seed_everything(seed)
    in_dim = bags[0].features.shape[1]
    aggregator = create_aggregator(method.name, in_dim=in_dim, n_classes=len(GRADES), bag_norm=True)
    model = MILModel(None, aggregator)
    config = FitConfig(
        epochs=budget.mil_epochs,
        batch_bags=budget.mil_batch_bags,
        lr=budget.mil_lr,
        seed=seed,
        instance_loss_weight=0.0,
    )
    train, val, test = split.take(bags)
    result = fit(model, train, val, config, torch.device("cpu"), progress=False)
    pred = predict(model, test, torch.device("cpu"))
    metrics = classification_metrics(pred.labels, pred.preds)
    metrics["calibration"] = probability_metrics(pred.probs, pred.labels)  # uncalibrated
    metrics["best_epoch"] = result.best_epoch
    if boxes is not None:
        coords = {b.image_id: b.coords for b in test}
        scores = dict(zip(pred.image_ids, pred.scores, strict=True))
        sizes = {b.image_id: b.size for b in test}
        abnormal = [b.image_id for b in test if b.label > 0]
        metrics["localization"] = grid_localization(
            coords, scores, sizes, boxes, abnormal, budget.tile_size
        )
    metrics["test"] = [
        [b.image_id, b.patient_id, int(b.label), int(p)]
        for b, p in zip(test, pred.preds, strict=True)
    ]
    return metrics


def _localize(
    test: list[FeatureBag],
    scores: list[np.ndarray],
    boxes: dict[str, np.ndarray] | None,
    tile: int,
) -> dict[str, Any] | None:
    """Grid localization of the test photos' instance ``scores`` (as :func:`_run_mil`'s)."""
    if boxes is None:
        return None
    return grid_localization(
        {b.image_id: b.coords for b in test},
        {b.image_id: s for b, s in zip(test, scores, strict=True)},
        {b.image_id: b.size for b in test},
        boxes,
        [b.image_id for b in test if b.label > 0],
        tile,
    )


def _run_instance(
    method: Method,
    bags: list[FeatureBag],
    split: Split,
    budget: Budget,
    boxes: dict[str, np.ndarray] | None,
    seed: int,
) -> dict[str, Any]:
    """An instance classifier (:mod:`mil_cyto.instance_learning`) on the fold's features.

    It selects nothing on the validation photos (its photo regression is fitted out of fold),
    so it trains on train + val; ``pseudo_gbm``'s attention head (the default head recipe of
    `mil_cyto.train`, with the budget's epochs and photos per step) trains on the training
    photos with its epoch chosen on val, then labels the instances of both. The test photos
    are never seen."""
    seed_everything(seed)
    train, val, test = split.take(bags)
    fitted = [*train, *val]
    record: dict[str, Any] = {}
    if method.name == "sil_gbm":
        labels = copied_labels(fitted)
    else:
        defaults = TrainConfig()
        head = create_head(defaults, bags[0].features.shape[1])
        model = MILModel(None, head)
        config = create_fit_config(
            defaults, epochs=budget.mil_epochs, batch_bags=budget.mil_batch_bags, seed=seed
        )
        result = fit(model, train, val, config, torch.device("cpu"), progress=False)
        record["head_best_epoch"] = result.best_epoch
        labels = attention_labels(
            fitted, predict(model, fitted, torch.device("cpu")), budget.pseudo_top_k
        )
    settings = InstanceConfig(max_iter=budget.gbm_max_iter, seed=seed)
    instance_model = fit_instance_model(fitted, labels, settings, n_classes=len(GRADES))
    probs, scores = instance_model.predict(test)
    preds = probs.argmax(axis=1)
    truth = np.array([b.label for b in test])
    metrics = classification_metrics(truth, preds)
    metrics["best_epoch"] = record.get("head_best_epoch")
    metrics["instance_model"] = {**instance_model.history, **record}
    localization = _localize(test, scores, boxes, budget.tile_size)
    if localization is not None:
        metrics["localization"] = localization
    metrics["test"] = [
        [b.image_id, b.patient_id, int(b.label), int(p)] for b, p in zip(test, preds, strict=True)
    ]
    return metrics


def _run_pipeline(
    rows: list[ManifestRow], split: Split, data: Path, run_dir: Path, seed: int, workers: int
) -> dict[str, Any]:
    """``python -m mil_cyto.train``'s defaults (only data, seed, workers and the run folder
    set) on this fold's ``split``: what users get, on the same folds as every other row."""
    from mil_cyto.pipeline.run import run_training  # the whole training run: imported late

    config = TrainConfig(data=str(data), out=str(run_dir), seed=seed, workers=workers)
    if (run_dir / "metrics.json").exists():
        (run_dir / "metrics.json").unlink()  # an interrupted fold reruns from scratch
    _, found = run_training(config, progress=False, split=split)
    keep = ("accuracy", "macro_sensitivity", "macro_specificity", "per_class")
    metrics: dict[str, Any] = {k: found[k] for k in keep if k in found}
    metrics.update(
        {k: found[k] for k in ("confusion_matrix", "localization", "calibration") if k in found}
    )
    metrics["best_epoch"] = None
    test_rows = [rows[i] for i in split.test]
    with (run_dir / "predictions.csv").open(encoding="utf-8") as handle:
        preds = [GRADES.index(r["pred"]) for r in csv.DictReader(handle)]
    metrics["test"] = [
        [r.image_id, r.patient_id, r.label, p] for r, p in zip(test_rows, preds, strict=True)
    ]
    return metrics


def _run_cnn(
    method: Method,
    rows: list[ManifestRow],
    split: Split,
    budget: Budget,
    images: torch.Tensor,
    data: Path,
    run_dir: Path,
    seed: int,
) -> dict[str, Any]:
    config = BaselineConfig(
        arch=method.name,
        data=str(data),
        out=str(run_dir),
        size=budget.cnn_size,
        epochs=budget.cnn_epochs,
        batch_size=budget.cnn_batch_size,
        lr=budget.cnn_lr,
        tile_size=budget.tile_size,
        stride=budget.stride,
        seed=seed,
    )
    if (run_dir / "metrics.json").exists():
        (run_dir / "metrics.json").unlink()  # an interrupted fold reruns from scratch
    _, metrics = run_baseline(config, rows=rows, split=split, images=images, progress=False)
    metrics["best_epoch"] = metrics.pop("training")["best_epoch"]
    test_rows = [rows[i] for i in split.test]
    with (run_dir / "predictions.csv").open(encoding="utf-8") as handle:
        preds = [GRADES.index(r["pred"]) for r in csv.DictReader(handle)]
    metrics["test"] = [
        [r.image_id, r.patient_id, r.label, p] for r, p in zip(test_rows, preds, strict=True)
    ]
    return metrics


def _rates(cm: np.ndarray) -> tuple[float, float, float]:
    """Accuracy, macro sensitivity, macro specificity of a confusion matrix (rows = truth);
    classes absent from the truth are left out of the sensitivity mean (as in metrics.py)."""
    total = cm.sum()
    tp = np.diag(cm).astype(float)
    pos = cm.sum(axis=1).astype(float)
    pred = cm.sum(axis=0).astype(float)
    neg = total - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(pos > 0, tp / pos, np.nan)
        spec = np.where(neg > 0, (neg - (pred - tp)) / neg, np.nan)
    return tp.sum() / total, float(np.nanmean(sens)), float(np.nanmean(spec))


def bootstrap_ci(
    tests: list[list[Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Patient-level bootstrap 95% intervals of accuracy and macro sensitivity/specificity
    over pooled test photos ``[image, patient, label, pred]`` (each photo tested once)."""
    patients = np.array([t[1] for t in tests])
    cells = np.array([t[2] * len(GRADES) + t[3] for t in tests])
    _, group = np.unique(patients, return_inverse=True)
    n_groups, n_cells = group.max() + 1, len(GRADES) ** 2
    per_patient = np.zeros((n_groups, n_cells), dtype=np.int64)  # each patient's confusion
    np.add.at(per_patient, (group, cells), 1)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        pick = rng.integers(0, n_groups, n_groups)
        cm = per_patient[pick].sum(axis=0).reshape(len(GRADES), len(GRADES))
        draws.append(_rates(cm))
    values = np.array(draws)
    names = ("accuracy", "macro_sensitivity", "macro_specificity")
    return {
        name: (
            float(np.nanpercentile(values[:, i], 2.5)),
            float(np.nanpercentile(values[:, i], 97.5)),
        )
        for i, name in enumerate(names)
    }


def summarise(method: str, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """One comparison row from a method's fold results."""
    row: dict[str, Any] = {"method": method, "n_folds": len(folds)}

    def stats(name: str, values: list[float | None]) -> None:
        vals = [v for v in values if v is not None]
        row[f"{name}_mean"] = float(np.mean(vals)) if vals else None
        row[f"{name}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None

    for key in ("accuracy", "macro_sensitivity", "macro_specificity"):
        stats(key, [f["metrics"][key] for f in folds])
    for grade in GRADES:
        for what in ("sensitivity", "specificity"):
            stats(f"{what[:4]}_{grade}", [f["metrics"]["per_class"][grade][what] for f in folds])
    loc = [f["metrics"].get("localization") or {} for f in folds]
    stats("instance_auroc", [x.get("instance_auroc") for x in loc])
    stats("pointing_game", [x.get("pointing_game") for x in loc])
    stats("cpu_s", [f["cpu_s"] for f in folds])
    row["peak_extra_mb"] = max(f["extra_rss_mb"] for f in folds)
    ci = bootstrap_ci([t for f in folds for t in f["metrics"]["test"]])
    for key, (lo, hi) in ci.items():
        row[f"{key}_ci_lo"], row[f"{key}_ci_hi"] = lo, hi
    return row


def _fmt(value: float | None, sd: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text if sd is None else f"{text} +- {sd:.{digits}f}"


def render_markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """``comparison.md``: the table, then the reference rows."""
    lines = [
        "# mil-cyto comparison",
        "",
        f"Data `{header['data']}`; {header['folds']} patient-grouped folds (test parts "
        f"disjoint, each photo tested once; validation carved from the rest); budget "
        f"`{header['budget']}`. Mean +- sd over folds; [95% CI] = patient-level bootstrap on "
        "the pooled test photos. CPU s = process CPU seconds per fold (both cores count; MIL "
        "includes the whole fold encoder it shares with the other MIL rows). Peak MB = "
        "resident memory above what the process already held. Localization: instance AUROC "
        "and pointing game on the photo's tile-size grid, of the instances' attention logits "
        "painted (MIL; their mean where nucleus crops overlap) or of Grad-CAM pooled over the "
        "grid's tiles (CNN). "
        f"Wall clock so far: {header.get('wall_s', 0.0):.0f} s.",
        "",
        "| method | acc | mean sens [95% CI] | mean spec | sens normal | sens CIN1 | "
        "sens CIN2+ | spec normal | spec CIN1 | spec CIN2+ | inst. AUROC | pointing | "
        "CPU s | peak MB |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        ci = ""
        if r.get("macro_sensitivity_ci_lo") is not None:
            ci = f" [{r['macro_sensitivity_ci_lo']:.2f}, {r['macro_sensitivity_ci_hi']:.2f}]"
        cells = [
            r["method"],
            _fmt(r["accuracy_mean"], r["accuracy_sd"]),
            _fmt(r["macro_sensitivity_mean"], r["macro_sensitivity_sd"]) + ci,
            _fmt(r["macro_specificity_mean"], r["macro_specificity_sd"]),
            *(_fmt(r[f"sens_{g}_mean"]) for g in GRADES),
            *(_fmt(r[f"spec_{g}_mean"]) for g in GRADES),
            _fmt(r["instance_auroc_mean"], r["instance_auroc_sd"]),
            _fmt(r["pointing_game_mean"]),
            _fmt(r["cpu_s_mean"], digits=0),
            _fmt(r["peak_extra_mb"], digits=0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reference rows (the study's whole-image CNNs at 512x512 on its own 2,619 photos, and "
        "specialist technicians; context, not this data):",
        "",
        "| reference | acc | mean sens | mean spec | sens normal | sens CIN1 | sens CIN2+ |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ref in REFERENCE_ROWS.items():
        cells = [
            name,
            _fmt(ref.get("accuracy")),
            _fmt(ref.get("macro_sensitivity")),
            _fmt(ref.get("macro_specificity")),
            *(_fmt(ref.get(f"sens {g}")) for g in GRADES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})


def _reference_rows() -> list[dict[str, Any]]:
    out = []
    for name, ref in REFERENCE_ROWS.items():
        row: dict[str, Any] = {"method": name, "kind": "reference"}
        for key in ("accuracy", "macro_sensitivity", "macro_specificity"):
            row[f"{key}_mean"] = ref.get(key)
        for g in GRADES:
            row[f"sens_{g}_mean"] = ref.get(f"sens {g}")
            row[f"spec_{g}_mean"] = ref.get(f"spec {g}")
        out.append(row)
    return out


def _write_tables(
    out: Path,
    parsed: list[Method],
    results: dict[str, list[dict[str, Any]]],
    header: dict[str, Any],
    wall_s: float,
) -> list[dict[str, Any]]:
    """(Re)write comparison.csv / .md from the folds done so far (after every fold, so an
    interrupted run still leaves a table; ``n_folds`` says how many each row holds)."""
    done = [m for m in parsed if results[m.label]]
    table = [
        {**summarise(m.label, results[m.label]), "kind": m.kind, "instances": m.instances}
        for m in done
    ]
    _write_csv(out / "comparison.csv", table + _reference_rows())
    write_text(out / "comparison.md", render_markdown(table, {**header, "wall_s": wall_s}))
    return table


def run_comparison(
    data: Path,
    methods: list[str],
    out: Path,
    budget: Budget,
    budget_name: str = "custom",
    *,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    features: Path | None = None,
) -> list[dict[str, Any]]:
    """Run every method on every fold (skipping folds already on disk) and write the tables.

    ``features``: a bag store (``python -m mil_cyto.extract`` on ``data``) whose features the
    MIL and instance methods use on every fold instead of a fold encoder; its tiling's
    instances must be the methods' (``abmil`` for grid tiles, ``abmil@cells`` for cells)."""
    parsed = [parse_method(m) for m in methods]
    rows = read_manifest(data / "manifest.csv")
    stored = _stored_features(features, rows, parsed) if features is not None else None
    cells_path = data / "cells.csv"
    boxes = read_cell_boxes(cells_path) if cells_path.is_file() else None
    fixed = fixed_split([r.split for r in rows], where=str(data / "manifest.csv"))
    if fixed is not None:  # e.g. mosaics: cells are disjoint only between the given parts
        print(f"{data / 'manifest.csv'} fixes the split ('split' column): one fold, not k")
        folds = [fixed]
    else:
        folds = patient_folds(
            [r.label for r in rows], [r.patient_id for r in rows], k=budget.folds, seed=seed
        )
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "data": str(data),
        "folds": len(folds),
        "budget": budget_name,
        "methods": methods,
        "budget_settings": asdict(budget),
        "seed": seed,
        "features": str(features) if features is not None else None,
        "mil_cyto_version": __version__,
    }
    write_json(out / "config.json", header)
    write_json(out / "folds.json", [s.as_dict() for s in folds])
    tile_bags: dict[str, tuple[list[Bag], float]] = {}
    images: torch.Tensor | None = None
    results: dict[str, list[dict[str, Any]]] = {m.label: [] for m in parsed}
    clock = time.perf_counter()
    table: list[dict[str, Any]] = []
    # a fold encoder with nothing to train gives every fold the same features: computed once
    fold_free = budget.pretrain_epochs == 0 and budget.encoder_epochs == 0
    every_fold: dict[str, tuple[list[FeatureBag], float]] = dict(stored or {})
    for k, split in enumerate(folds):
        fold_bags: dict[str, tuple[list[FeatureBag], float]] = dict(every_fold)
        for method in parsed:
            path = out / "folds" / _slug(method.label) / f"fold{k}.json"
            if path.exists():
                results[method.label].append(json.loads(path.read_text()))
                continue
            shared_cpu = 0.0
            if method.kind in ("mil", "instance"):
                inst = method.instances
                if inst not in fold_bags:
                    if inst not in tile_bags:
                        with measure() as cost:
                            loaded = load_bags(
                                rows, _tiling(budget, inst), workers=workers, progress=False
                            )
                        tile_bags[inst] = (loaded, cost["cpu_s"])
                    with measure() as cost:
                        bags = fold_features(tile_bags[inst][0], split, budget, seed)
                    # what the features cost: the fold's share of the one-off tiling and the
                    # whole fold encoder
                    fold_bags[inst] = (bags, cost["cpu_s"] + tile_bags[inst][1] / budget.folds)
                    if fold_free:
                        every_fold[inst] = fold_bags[inst]
                # what running this method alone would cost: its features and its own head
                shared_cpu = fold_bags[inst][1]
                run = _run_mil if method.kind == "mil" else _run_instance
                with measure() as used:
                    metrics = run(method, fold_bags[inst][0], split, budget, boxes, seed)
            elif method.kind == "pipeline":
                run_dir = out / "runs" / _slug(method.label) / f"fold{k}"
                with measure() as used:
                    metrics = _run_pipeline(rows, split, data, run_dir, seed, workers)
            else:
                if images is None:
                    images = load_resized(rows, budget.cnn_size, workers)
                run_dir = out / "runs" / _slug(method.label) / f"fold{k}"
                with measure() as used:
                    metrics = _run_cnn(method, rows, split, budget, images, data, run_dir, seed)
            record = {
                "method": method.label,
                "fold": k,
                "metrics": metrics,
                "cpu_s": used["cpu_s"] + shared_cpu,
                "own_cpu_s": used["cpu_s"],
                "shared_cpu_s": shared_cpu,
                "wall_s": used["wall_s"],
                "extra_rss_mb": used["extra_rss_mb"],
            }
            write_json(path, record)
            results[method.label].append(record)
            if progress:
                print(
                    f"[{time.perf_counter() - clock:6.0f} s] fold {k} {method.label}: "
                    f"mean sens {metrics['macro_sensitivity'] or 0:.3f}, "
                    f"CPU {record['cpu_s']:.0f} s",
                    flush=True,
                )
        table = _write_tables(out, parsed, results, header, time.perf_counter() - clock)
    return table


def _stored_features(
    store: Path, rows: list[ManifestRow], methods: list[Method]
) -> dict[str, tuple[list[FeatureBag], float]]:
    """The bag store's features of every photo, keyed by its tiling's instances (CPU cost 0:
    extracted before), after checking that the methods use those instances."""
    from mil_cyto.features import BagStore

    with BagStore(store) as handle:
        instances = handle.provenance.get("tiling", {}).get("instances", "grid")
        missing = [r.image_id for r in rows if r.image_id not in handle]
    if missing:
        raise MilCytoError(
            f"bag store {store} lacks {len(missing)} photo(s) of the manifest (first: "
            f"{missing[0]}); extract it from this data folder with python -m mil_cyto.extract"
        )
    wrong = [m.label for m in methods if m.kind in ("mil", "instance") and m.instances != instances]
    if wrong:
        suffix = "@cells" if instances == "cells" else " (no @cells)"
        raise MilCytoError(
            f"bag store {store} holds {instances} instances but {', '.join(wrong)} use others; "
            f"name the methods{suffix} or extract a store with --instances to match"
        )
    return {instances: (stored_bags(store, rows), 0.0)}


def main(argv: list[str] | None = None) -> int:
    """``python -m mil_cyto.compare``: the command is :mod:`mil_cyto.cli.compare`."""
    from mil_cyto.cli.compare import main as command

    return command(argv, prog="python -m mil_cyto.compare")


if __name__ == "__main__":
    sys.exit(main())
