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

import argparse
import copy
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
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
    """A whole-image baseline run; defaults follow the reference study where it says."""

    arch: str = "densenet121"
    data: str | None = None
    out: str | None = None
    label_column: str | None = None
    cells: str | None = None
    weights: str | None = None  # local weights file (never downloaded)
    weights_cache: str | None = None
    size: int = 512  # the study's input side
    epochs: int = 300  # the study's
    batch_size: int = 8
    lr: float = 0.01  # the study's initial learning rate
    lr_decay: float = 0.98  # per-epoch exponential decay (the study does not give its rate)
    weight_decay: float = 0.01
    class_weights: bool = False  # the study used plain cross-entropy
    augment: bool = True  # random flips
    tile_size: int = 96  # tiles over which Grad-CAM is pooled (as the MIL default)
    stride: int = 96
    min_tissue: float = 0.05
    seed: int = 0
    split_seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; no effect on CPU
    workers: int = 2
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_resized(rows: list[ManifestRow], size: int, workers: int = 2) -> torch.Tensor:
    """Photos squashed to ``size`` x ``size`` (bilinear): ``(N, 3, size, size)`` uint8."""

    def one(row: ManifestRow) -> np.ndarray:
        image = Image.fromarray(load_rgb(row.image, hint=f"manifest row {row.image_id!r}"))
        return np.asarray(image.resize((size, size), Image.BILINEAR))

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
    from mil_cyto.train import resolve_data

    data_dir = resolve_data(TrainConfig(data=config.data, workers=config.workers), progress)
    if rows is None:
        rows = read_manifest(data_dir / "manifest.csv", label_column=config.label_column)
    if split is None:  # the manifest's 'split' column, else the patient-disjoint split
        split = fixed_split([r.split for r in rows], where=str(data_dir / "manifest.csv"))
    if split is None:
        split = train_val_test_split(
            [r.label for r in rows], [r.patient_id for r in rows], seed=config.split_seed
        )
    run_dir = _run_dir(config.out, config.arch)
    cells_path = Path(config.cells) if config.cells else data_dir / "cells.csv"
    boxes = read_cell_boxes(cells_path) if cells_path.is_file() else None
    resolved = {**config.to_dict(), "timm_name": timm_name(config.arch)}
    resolved.update(data_resolved=str(data_dir), mil_cyto_version=__version__)
    write_json(run_dir / "config.json", resolved)
    write_json(
        run_dir / "splits.json",
        {k: [rows[i].image_id for i in getattr(split, k)] for k in ("train", "val", "test")},
    )
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
    metrics = classification_metrics(pred.labels, pred.preds)
    metrics["training"] = training
    if boxes is not None:
        abnormal = [r.image_id for r in test_rows if r.label > 0]
        relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
        metrics["localization"] = localization_metrics(coords, relative, boxes, abnormal)
        metrics["localization"]["score"] = "Grad-CAM share x tiles (1 = uniform)"
    timing["testing and Grad-CAM"] = time.perf_counter() - step

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mil_cyto.baseline",
        description="Train a whole-image CNN (the reference study's protocol) on the same "
        "patient-disjoint split as mil_cyto.train and write a run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = BaselineConfig()
    add = parser.add_argument
    add("--arch", default=d.arch, help=f"{', '.join(STUDY_ARCHS)} or any timm model name")
    add("--data", help="folder with manifest.csv (default: built-in synthetic set)")
    add("--out", help="run folder (default: runs/<arch>-<timestamp>)")
    add("--label-column", help="grade column to learn: histology, cytology or label")
    add("--cells", help="cell annotations CSV for localization (default: DATA/cells.csv)")
    add("--weights", help="local weights file (safetensors or state dict); never downloaded")
    add("--weights-cache", help="existing Hugging Face cache folder holding the weights")
    for name in ("size", "epochs", "batch_size", "tile_size", "stride", "seed", "split_seed"):
        add(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "lr_decay", "weight_decay", "min_tissue"):
        add(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    add("--class-weights", action=argparse.BooleanOptionalAction, default=d.class_weights)
    add("--augment", action=argparse.BooleanOptionalAction, default=d.augment)
    add("--device", default=d.device, help="auto, cpu or cuda")
    add("--amp", action=argparse.BooleanOptionalAction, default=d.amp, help="bf16 on CUDA")
    add("--workers", type=int, default=d.workers, help="threads for decoding photos")
    add("--threads", type=int, default=d.threads, help="torch CPU threads (0 = default)")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = BaselineConfig(**{f.name: getattr(args, f.name) for f in fields(BaselineConfig)})
    try:
        if config.epochs < 1 or config.size < 32 or config.batch_size < 1:
            raise MilCytoError("--epochs and --batch-size must be >= 1 and --size >= 32")
        run_dir, metrics = run_baseline(config, progress=not args.quiet)
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\nrun folder: {run_dir}\n\n{format_table(metrics)}")
    loc = metrics.get("localization")
    if loc and loc.get("instance_auroc") is not None:
        print(
            f"\nlocalization (Grad-CAM): instance AUROC {loc['instance_auroc']:.3f}, "
            f"pointing game {loc['pointing_game']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
