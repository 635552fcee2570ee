"""``python -m mil_cyto.baseline``: the reference study's whole-image CNNs on our splits.

Photos are squashed to 512x512 and a network (ResNet18/34/50/101, DenseNet121/169/201,
MobileNetV3 small/large, or any timm name) is trained with the study's protocol: AdamW at
initial lr 0.01 with exponential decay, softmax cross-entropy; random init unless local
weights are given. The split is the same patient-disjoint one ``mil_cyto.train`` uses, the
epoch is chosen on validation (the study had none), and the run folder has the same files
as a MIL run, with Grad-CAM tile scores (Captum) in ``attention.h5`` so localization is
measured for baselines too. See ``--help``.
"""

from __future__ import annotations

import copy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mil_cyto import __version__
from mil_cyto.calibration import probability_metrics
from mil_cyto.cli.options import (
    cells_option,
    data_option,
    device_option,
    label_column_option,
    option,
    out_option,
    seed_option,
    threads_option,
    workers_option,
)
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.splits import Split, fixed_split, train_val_test_split
from mil_cyto.data.tiling import TilingConfig, grid_coords, tissue_fraction, tissue_mask
from mil_cyto.devices import mixed_precision, resolve_device
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_path, write_json, write_text
from mil_cyto.labels import GRADES
from mil_cyto.localization import localization_metrics, read_cell_boxes
from mil_cyto.metrics import classification_metrics, format_table
from mil_cyto.models.whole_image import (
    STUDY_ARCHS,
    WholeImageCNN,
    build_whole_image_cnn,
    grad_cam,
    tile_scores,
    timm_name,
)
from mil_cyto.reference import REFERENCE_ROWS
from mil_cyto.reporting import plot_confusion, write_attention, write_predictions
from mil_cyto.training import Predictions, seed_everything


@dataclass
class BaselineConfig:
    """A whole-image baseline run; defaults follow the reference study where it says. Each
    field is a flag of ``mil-cyto baseline`` (``--field-name``)."""

    arch: str = option("densenet121", help=f"{', '.join(STUDY_ARCHS)} or any timm model name")
    data: str | None = data_option()
    out: str | None = out_option("run folder", default_help="runs/<arch>-<timestamp>")
    label_column: str | None = label_column_option()
    cells: str | None = cells_option()
    weights: str | None = option(
        None, help="local weights file (safetensors or state dict); never downloaded"
    )
    weights_cache: str | None = option(
        None, help="existing Hugging Face cache folder holding the weights"
    )
    size: int = option(512, help="input side the photos are squashed to (the study's)")
    epochs: int = option(300, help="training epochs (the study's)")
    batch_size: int = option(8, help="photos per optimisation step")
    lr: float = option(0.01, help="initial learning rate (the study's)")
    lr_decay: float = option(
        0.98, help="per-epoch exponential decay of the learning rate (the study gives none)"
    )
    weight_decay: float = option(0.01, help="AdamW weight decay")
    class_weights: bool = option(
        False, help="weight the loss by inverse class frequency (the study: plain cross-entropy)"
    )
    augment: bool = option(True, help="random flips")
    tile_size: int = option(96, help="side of the tiles over which Grad-CAM is pooled, px")
    stride: int = option(96, help="their grid stride in pixels")
    min_tissue: float = option(0.05, help="minimum tissue share of a scored tile")
    seed: int = seed_option("training seed")
    split_seed: int = option(0, help="seed of the patient split")
    device: str = device_option()
    amp: bool = option(True, help="bf16 autocast on CUDA; no effect on CPU")
    workers: int = workers_option()
    threads: int = threads_option()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_resized(rows: list[ManifestRow], size: int, workers: int = 2) -> torch.Tensor:
    """Photos squashed to ``size`` x ``size`` (bilinear): ``(N, 3, size, size)`` uint8."""

    def one(row: ManifestRow) -> np.ndarray:
        image = Image.fromarray(load_rgb(row.image, hint=f"manifest row {row.image_id!r}"))
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        arrays = list(pool.map(one, rows))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _logits(
    model: WholeImageCNN, x: torch.Tensor, device: torch.device, amp: bool = True
) -> torch.Tensor:
    model.eval()
    with mixed_precision(device, amp):
        return torch.cat([model(part.to(device)).float().cpu() for part in x.split(16)])


def fit_baseline(
    model: WholeImageCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    split: Split,
    config: BaselineConfig,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Any]:
    """Train on ``split.train``; keep the epoch with the best validation macro sensitivity
    (ties: lower validation loss). Returns ``{"best_epoch", "history"}``."""
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    weight = None
    if config.class_weights:
        counts = torch.bincount(y[split.train], minlength=len(GRADES)).float()
        weight = (counts.sum() / (len(GRADES) * counts.clamp_min(1))).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
    train = torch.as_tensor(split.train)
    history: list[dict[str, Any]] = []
    best_key, best_epoch, best_state = None, -1, None
    for epoch in tqdm(range(config.epochs), desc="training", disable=not progress):
        model.train()
        total = 0.0
        for idx in train[torch.randperm(len(train), generator=generator)].split(config.batch_size):
            xb = x[idx].to(device)
            if config.augment:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                xb[flip] = xb[flip].flip(3)
            with mixed_precision(device, config.amp):
                logits = model(xb).float()
            loss = F.cross_entropy(logits, y[idx].to(device), weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        decay.step()
        val_logits = _logits(model, x[split.val], device, config.amp)
        val_loss = F.cross_entropy(val_logits, y[split.val]).item()
        val = classification_metrics(y[split.val].numpy(), val_logits.argmax(1).numpy())
        key = (val["macro_sensitivity"] or 0.0, -val_loss)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(len(train), 1),
                "val_loss": val_loss,
                "val_accuracy": val["accuracy"],
                "val_macro_sensitivity": val["macro_sensitivity"],
            }
        )
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"best_epoch": best_epoch, "history": history}


def predict_with_cam(
    model: WholeImageCNN,
    x: torch.Tensor,
    rows: list[ManifestRow],
    tiling: TilingConfig,
    device: torch.device,
    amp: bool = True,
) -> tuple[Predictions, dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """Class probabilities, and per photo the Grad-CAM of its most probable abnormal grade
    (so a photo called normal is still asked where it sees atypia) pooled over the photo's
    tissue tiles: ``attention`` sums to 1, ``scores`` are the tiles' mean Grad-CAM (float32;
    ``amp`` applies to the class probabilities on CUDA)."""
    logits = _logits(model, x, device, amp)
    probs = torch.softmax(logits, dim=1)
    target = 1 + probs[:, 1:].argmax(dim=1)
    attention, scores, coords, sizes = [], [], {}, {}
    for i, row in enumerate(rows):
        cam = grad_cam(model, x[i : i + 1].to(device), target[i : i + 1].to(device))[0]
        image = load_rgb(row.image)
        size_hw = (int(image.shape[0]), int(image.shape[1]))
        boxes = grid_coords(*size_hw, tiling)
        keep = tissue_fraction(tissue_mask(image), boxes) >= tiling.min_tissue
        boxes = boxes[keep] if keep.any() else boxes
        s = tile_scores(cam.cpu().numpy(), boxes, size_hw)
        a = s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s))
        attention.append(a.astype(np.float32))
        scores.append(s.astype(np.float32))
        coords[row.image_id], sizes[row.image_id] = boxes, size_hw
    labels = np.array([r.label for r in rows])
    loss = F.cross_entropy(logits, torch.as_tensor(labels)).item()
    pred = Predictions([r.image_id for r in rows], labels, probs.numpy(), attention, scores, loss)
    return pred, coords, sizes


def _run_dir(out: str | None, arch: str) -> Path:
    path = Path(out or f"runs/{arch}-{datetime.now():%Y%m%d-%H%M%S}")
    if (path / "metrics.json").exists():
        raise MilCytoError(f"{path} already holds a finished run; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rows_and_split(
    config: BaselineConfig, data_dir: Path, rows: list[ManifestRow] | None, split: Split | None
) -> tuple[list[ManifestRow], Split]:
    """The rows and split as given, else the manifest's rows and its ``split`` column, else
    the patient-disjoint split seeded by ``config.split_seed``."""
    if rows is None:
        rows = read_manifest(data_dir / "manifest.csv", label_column=config.label_column)
    if split is None:  # the manifest's 'split' column, else the patient-disjoint split
        split = fixed_split([r.split for r in rows], where=str(data_dir / "manifest.csv"))
    if split is None:
        split = train_val_test_split(
            [r.label for r in rows], [r.patient_id for r in rows], seed=config.split_seed
        )
    return rows, split


def _cell_boxes(config: BaselineConfig, data_dir: Path) -> dict[str, np.ndarray] | None:
    """Atypical cell boxes for localization (``--cells``, else DATA/cells.csv), or None."""
    cells_path = Path(config.cells) if config.cells else data_dir / "cells.csv"
    return read_cell_boxes(cells_path) if cells_path.is_file() else None


def _write_setup(
    run_dir: Path, config: BaselineConfig, data_dir: Path, rows: list[ManifestRow], split: Split
) -> dict[str, Any]:
    """Write ``config.json`` (the resolved settings, returned) and ``splits.json`` (photo
    ids of each part)."""
    resolved = {**config.to_dict(), "timm_name": timm_name(config.arch)}
    resolved.update(data_resolved=str(data_dir), mil_cyto_version=__version__)
    write_json(run_dir / "config.json", resolved)
    write_json(
        run_dir / "splits.json",
        {k: [rows[i].image_id for i in getattr(split, k)] for k in ("train", "val", "test")},
    )
    return resolved


def _test_metrics(
    pred: Predictions,
    training: dict[str, Any],
    test_rows: list[ManifestRow],
    coords: dict[str, np.ndarray],
    boxes: dict[str, np.ndarray] | None,
) -> dict[str, Any]:
    """Classification, calibration (temperature 1), training history and, when cell boxes
    exist, localization of the Grad-CAM tile shares on the test photos."""
    metrics = classification_metrics(pred.labels, pred.preds)
    metrics["calibration"] = {**probability_metrics(pred.probs, pred.labels), "temperature": 1.0}
    metrics["training"] = training
    if boxes is not None:
        abnormal = [r.image_id for r in test_rows if r.label > 0]
        relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
        metrics["localization"] = localization_metrics(coords, relative, boxes, abnormal)
        metrics["localization"]["score"] = "Grad-CAM share x tiles (1 = uniform)"
    return metrics


def _save_model(run_dir: Path, model: WholeImageCNN, config: BaselineConfig) -> None:
    """Write ``model.safetensors`` (the weights) and ``model.json`` (how to rebuild it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "mil-cyto-whole-image/1"})
    recipe = {
        "format": "mil-cyto-whole-image/1",
        "arch": config.arch,
        "timm_name": timm_name(config.arch),
        "classes": list(GRADES),
        "size": config.size,
    }
    write_json(run_dir / "model.json", recipe)


def run_baseline(
    config: BaselineConfig,
    *,
    rows: list[ManifestRow] | None = None,
    split: Split | None = None,
    images: torch.Tensor | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Train, select on validation, test, and write the run folder; returns it and metrics.

    ``rows``, ``split`` and pre-resized ``images`` may be passed in (the comparison does, to
    share folds and decoded photos between methods).
    """
    timing: dict[str, float] = {}
    clock = time.perf_counter()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    from mil_cyto.config import TrainConfig
    from mil_cyto.pipeline.data import resolve_data

    data_dir = resolve_data(TrainConfig(data=config.data, workers=config.workers), progress)
    rows, split = _rows_and_split(config, data_dir, rows, split)
    run_dir = _run_dir(config.out, config.arch)
    boxes = _cell_boxes(config, data_dir)
    resolved = _write_setup(run_dir, config, data_dir, rows, split)
    step = time.perf_counter()
    x = images if images is not None else load_resized(rows, config.size, config.workers)
    y = torch.tensor([r.label for r in rows])
    timing["resizing photos"] = time.perf_counter() - step

    model = build_whole_image_cnn(config.arch, config.weights, config.weights_cache, len(GRADES))
    step = time.perf_counter()
    training = fit_baseline(model, x, y, split, config, device, progress)
    timing["training"] = time.perf_counter() - step

    step = time.perf_counter()
    test_rows = [rows[i] for i in split.test]
    tiling = TilingConfig(config.tile_size, config.stride, config.min_tissue)
    pred, coords, sizes = predict_with_cam(
        model, x[split.test], test_rows, tiling, device, config.amp
    )
    metrics = _test_metrics(pred, training, test_rows, coords, boxes)
    timing["testing and Grad-CAM"] = time.perf_counter() - step

    _save_model(run_dir, model, config)
    write_predictions(run_dir / "predictions.csv", test_rows, pred)
    write_attention(run_dir / "attention.h5", pred, coords, sizes)
    plot_confusion(run_dir / "confusion_matrix.png", metrics["confusion_matrix"])
    timing["total"] = time.perf_counter() - clock
    metrics["timing_s"] = timing
    write_text(run_dir / "report.md", render_baseline_report(metrics, resolved))
    write_json(run_dir / "metrics.json", metrics)  # last: marks a finished run
    return run_dir, metrics


def render_baseline_report(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """``report.md`` of a baseline run: the table, reference rows, localization, timing."""
    lines = [
        f"# whole-image baseline: {config['arch']}",
        "",
        f"Photos squashed to {config['size']}x{config['size']}; AdamW lr {config['lr']} with "
        f"x{config['lr_decay']} per epoch, {config['epochs']} epochs, epoch "
        f"{metrics['training']['best_epoch']} chosen on validation; {metrics['n_test']} "
        "patient-disjoint test photos.",
        "",
        format_table(metrics),
        "",
        "| reference (study's own data) | acc | mean sens | mean spec |",
        "|---|---|---|---|",
    ]
    for name, row in REFERENCE_ROWS.items():
        acc = row.get("accuracy")
        lines.append(
            f"| {name} | {'-' if acc is None else f'{acc:.3f}'} | "
            f"{row['macro_sensitivity']:.3f} | {row['macro_specificity']:.3f} |"
        )
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    loc = metrics.get("localization")
    if loc and loc.get("instance_auroc") is not None:
        lines += [
            f"Localization from Grad-CAM pooled over {config['tile_size']}-px tiles: instance "
            f"AUROC {loc['instance_auroc']:.3f}, pointing game {loc['pointing_game']:.3f} "
            f"({loc['n_images']} abnormal test photos).",
            "",
        ]
    lines += [f"- {k}: {v:.1f} s" for k, v in metrics.get("timing_s", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m mil_cyto.baseline``: the command is :mod:`mil_cyto.cli.baseline`."""
    from mil_cyto.cli.baseline import main as command

    return command(argv, prog="python -m mil_cyto.baseline")


if __name__ == "__main__":
    sys.exit(main())
