"""REFERENCE ONLY: an instance-supervised upper bound for MIL (mosaic fields or a training run).

The tile encoder (the package's small CNN) is trained on single-cell labels of the
*training* photos only; its single-cell accuracy is measured on the test cells. The encoder
is then frozen and an attention-MIL head is trained on its tile features with image-level
labels, on the same train / val / test split. This uses cell labels that MIL never sees, so
it bounds what a perfect tile encoder of this size would give; it is never reported as a
MIL result.

- ``--mosaic DIR --cells CELLS_DIR``: a Herlev mosaic (``benchmarks/herlev.py``); cells are
  the mosaic's crops (``cell_splits.csv``), resized to the tile size.
- ``--run RUN``: a ``mil_cyto.train`` run folder (its data, split, tiling, head and fit
  settings; ``--instances`` overrides its instances); cells are the boxes of the data's
  ``cells.csv``, a tile-size crop centred on each, at native resolution.

    python benchmarks/instance_upper_bound.py --mosaic DIR --cells CELLS_DIR --out OUT.json
    python benchmarks/instance_upper_bound.py --run runs/default --out OUT.json [--instances cells]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mil_cyto.config import TrainConfig, load_config_file
from mil_cyto.data.bags import load_bags
from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.splits import fixed_split
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import create_encoder
from mil_cyto.labels import GRADES
from mil_cyto.localization import localization_metrics, read_cell_boxes, read_cells
from mil_cyto.metrics import classification_metrics
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.pipeline.data import resolve_data
from mil_cyto.pipeline.recipe import create_fit_config, create_head
from mil_cyto.training import FeatureBag, FitConfig, fit, predict, seed_everything

Crops = dict[str, tuple[torch.Tensor, torch.Tensor]]


def load_crops(cells: Path, mosaic: Path, size: int) -> Crops:
    """Per split: crops resized to ``size`` ``(N, 3, size, size)`` uint8 and grade indices."""
    parts: dict[str, tuple[list[np.ndarray], list[int]]] = {
        s: ([], []) for s in ("train", "val", "test")
    }
    with (mosaic / "cell_splits.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            with Image.open(cells / row["crop"]) as im:
                arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
            parts[row["split"]][0].append(arr)
            parts[row["split"]][1].append(GRADES.index(row["grade"]))
    return {
        s: (torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).contiguous(), torch.tensor(y))
        for s, (x, y) in parts.items()
    }


def crops_around_cells(
    data: Path, cells_csv: Path, splits: dict[str, list[str]], size: int
) -> Crops:
    """Per split: a ``size``-px crop centred on every annotated cell of its photos (the
    photo mirrored past its border), ``(N, 3, size, size)`` uint8, and the cells' grades."""
    cells = read_cells(cells_csv)
    out = {}
    for part, images in splits.items():
        crops, grades = [], []
        for image in images:
            photo = np.pad(load_rgb(data / image), ((size, size), (size, size), (0, 0)), "reflect")
            for cell in cells.get(image, []):
                x0, y0, x1, y1 = cell.box
                left = int((x0 + x1) / 2) + size - size // 2  # + size: the mirrored border
                top = int((y0 + y1) / 2) + size - size // 2
                crops.append(photo[top : top + size, left : left + size])
                grades.append(GRADES.index(cell.grade))
        tensor = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        out[part] = (tensor, torch.tensor(grades))
    return out


def train_cell_encoder(
    data: Crops, epochs: int, seed: int
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Small CNN + linear head on single-cell labels; the epoch is chosen on val crops."""
    torch.manual_seed(seed)
    encoder = create_encoder("smallcnn")
    head = torch.nn.Linear(encoder.out_dim, len(GRADES))
    net = torch.nn.Sequential(encoder, head)
    x, y = data["train"]
    weight = len(y) / (len(GRADES) * torch.bincount(y, minlength=len(GRADES)).clamp_min(1))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=epochs * int(np.ceil(len(y) / 32))
    )
    gen = torch.Generator().manual_seed(seed)

    def scores(split: str) -> dict[str, float]:
        net.eval()
        with torch.inference_mode():
            pred = torch.cat([net(b).argmax(1) for b in data[split][0].split(256)])
        m = classification_metrics(data[split][1].numpy(), pred.numpy())
        return {"accuracy": m["accuracy"], "macro_sensitivity": m["macro_sensitivity"]}

    best, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(y), generator=gen).split(32):
            xb = torch.rot90(x[idx], int(torch.randint(4, (1,), generator=gen)), dims=(2, 3))
            if torch.rand(1, generator=gen) < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(net(xb), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = scores("val")["macro_sensitivity"] or 0.0
        if val > best:
            best, best_state = val, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return encoder.eval(), {f"test_{k}": v for k, v in scores("test").items()}


@dataclass
class Setup:
    """What the two sources provide: cell crops per split, the photos, a function splitting
    bags into train / val / test, the tiling, a head factory, fit settings, cells.csv."""

    crops: Crops
    rows: list
    take: Callable[[list[FeatureBag]], tuple[list[FeatureBag], ...]]
    tiling: TilingConfig
    head: Callable[[int], torch.nn.Module]
    fit_config: FitConfig
    cells_csv: Path
    cell_info: dict = field(default_factory=dict)


def _mosaic_setup(args: argparse.Namespace) -> Setup:
    rows = read_manifest(args.mosaic / "manifest.csv")
    split = fixed_split([r.split for r in rows])
    assert split is not None, "the mosaic manifest has no split column"
    with (args.mosaic / "cell_splits.csv").open(newline="") as handle:
        first = next(csv.DictReader(handle))["crop"]
    with Image.open(args.cells / first) as crop:
        native = list(crop.size)
    return Setup(
        crops=load_crops(args.cells, args.mosaic, args.tile_size),
        rows=rows,
        take=split.take,
        tiling=TilingConfig(args.tile_size, args.tile_size, 0.05),
        head=lambda d: create_aggregator(args.aggregator, d, len(GRADES), bag_norm=True),
        fit_config=FitConfig(epochs=args.mil_epochs, seed=args.seed, instance_loss_weight=1.0),
        cells_csv=args.mosaic / "cells.csv",
        cell_info={"native_crop_px": native},
    )


def _run_setup(args: argparse.Namespace) -> Setup:
    config = TrainConfig(**load_config_file(args.run / "config.json"))
    data = resolve_data(config, progress=False)
    cells_csv = Path(config.cells) if config.cells else data / "cells.csv"
    splits = json.loads((args.run / "splits.json").read_text())

    def take(bags: list[FeatureBag]) -> tuple[list[FeatureBag], ...]:
        by_id = {b.image_id: b for b in bags}
        return tuple([by_id[i] for i in splits[part]] for part in ("train", "val", "test"))

    instances = args.instances or config.instances
    return Setup(
        crops=crops_around_cells(data, cells_csv, splits, config.tile_size),
        rows=read_manifest(data / "manifest.csv", label_column=config.label_column),
        take=take,
        tiling=TilingConfig(config.tile_size, config.stride, config.min_tissue, instances),
        head=lambda d: create_head(config, d),
        fit_config=create_fit_config(config),
        cells_csv=cells_csv,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mosaic", type=Path, help="mosaic data set folder")
    p.add_argument("--cells", type=Path, help="the crops the mosaic was built from")
    p.add_argument("--run", type=Path, help="a mil_cyto.train run folder instead of a mosaic")
    p.add_argument("--instances", choices=("grid", "cells"), help="with --run: override")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--tile-size", type=int, default=48, help="mosaic tile size")
    p.add_argument("--cell-epochs", type=int, default=20)
    p.add_argument("--mil-epochs", type=int, default=16, help="mosaic head epochs")
    p.add_argument("--aggregator", default="gated_abmil", help="mosaic head")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if (args.run is None) == (args.mosaic is None or args.cells is None):
        p.error("give --run RUN, or --mosaic DIR with --cells CELLS_DIR")
    start = time.perf_counter()
    seed_everything(args.seed)
    setup = _run_setup(args) if args.run else _mosaic_setup(args)
    encoder, cell_scores = train_cell_encoder(setup.crops, args.cell_epochs, args.seed)

    bags = []
    with torch.inference_mode():
        for b in load_bags(setup.rows, setup.tiling, workers=2, progress=False):
            feats = torch.cat([encoder(t) for t in torch.from_numpy(b.tiles).split(512)])
            bags.append(
                FeatureBag(b.image_id, b.patient_id, b.label, feats.numpy(), b.coords, b.size)
            )
    model = MILModel(None, setup.head(encoder.out_dim))
    device = torch.device("cpu")
    train, val, test = setup.take(bags)
    fit(model, train, val, setup.fit_config, device, progress=False)
    pred = predict(model, test, device)
    metrics = classification_metrics(pred.labels, pred.preds)
    boxes = read_cell_boxes(setup.cells_csv)
    coords = {b.image_id: b.coords for b in test}
    relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
    abnormal = [b.image_id for b in test if b.label > 0]
    metrics["localization"] = localization_metrics(coords, relative, boxes, abnormal)
    metrics["single_cell"] = {
        **cell_scores,
        **setup.cell_info,
        "train_cells": len(setup.crops["train"][1]),
        "input_px": int(setup.crops["train"][0].shape[-1]),
        "instances": setup.tiling.instances,
    }
    metrics["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("accuracy", "macro_sensitivity", "single_cell")}))


if __name__ == "__main__":
    main()
