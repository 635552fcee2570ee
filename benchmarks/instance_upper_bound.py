"""REFERENCE ONLY: an instance-supervised upper bound for MIL on mosaic fields.

The tile encoder (the package's small CNN) is trained on the single-cell labels of the
mosaic's *training* crops (``cell_splits.csv``), each crop resized to the tile size; its
single-cell accuracy is measured on the test crops. The encoder is then frozen and an
attention-MIL head is trained on its tile features with image-level labels, on the mosaic's
own train / val / test split. This uses cell labels that MIL never sees, so it bounds what a
perfect tile encoder of this size would give; it is never reported as a MIL result.

    python benchmarks/instance_upper_bound.py --mosaic DIR --cells CELLS_DIR --out OUT.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mil_cyto.data.bags import load_bags
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.splits import fixed_split
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.encoders import create_encoder
from mil_cyto.labels import GRADES
from mil_cyto.localization import localization_metrics, read_cell_boxes
from mil_cyto.metrics import classification_metrics
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.training import FeatureBag, FitConfig, fit, predict, seed_everything


def load_crops(
    cells: Path, mosaic: Path, size: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
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


def train_cell_encoder(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]], epochs: int, seed: int
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mosaic", type=Path, required=True, help="mosaic data set folder")
    p.add_argument("--cells", type=Path, required=True, help="the crops it was built from")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--tile-size", type=int, default=48)
    p.add_argument("--cell-epochs", type=int, default=20)
    p.add_argument("--mil-epochs", type=int, default=16)
    p.add_argument("--aggregator", default="gated_abmil")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    seed_everything(args.seed)
    crops = load_crops(args.cells, args.mosaic, args.tile_size)
    native = Image.open(
        args.cells / next(iter(csv.DictReader((args.mosaic / "cell_splits.csv").open())))["crop"]
    ).size
    encoder, cell_scores = train_cell_encoder(crops, args.cell_epochs, args.seed)

    rows = read_manifest(args.mosaic / "manifest.csv")
    split = fixed_split([r.split for r in rows])
    assert split is not None, "the mosaic manifest has no split column"
    tiling = TilingConfig(args.tile_size, args.tile_size, 0.05)
    bags = []
    with torch.inference_mode():
        for b in load_bags(rows, tiling, workers=2, progress=False):
            feats = torch.cat([encoder(t) for t in torch.from_numpy(b.tiles).split(512)])
            bags.append(
                FeatureBag(b.image_id, b.patient_id, b.label, feats.numpy(), b.coords, b.size)
            )
    aggregator = create_aggregator(
        args.aggregator, in_dim=encoder.out_dim, n_classes=len(GRADES), bag_norm=True
    )
    model = MILModel(None, aggregator)
    cfg = FitConfig(epochs=args.mil_epochs, seed=args.seed, instance_loss_weight=1.0)
    device = torch.device("cpu")
    train, val, test = split.take(bags)
    fit(model, train, val, cfg, device, progress=False)
    pred = predict(model, test, device)
    metrics = classification_metrics(pred.labels, pred.preds)
    boxes = read_cell_boxes(args.mosaic / "cells.csv")
    coords = {b.image_id: b.coords for b in test}
    relative = {i: a * len(a) for i, a in zip(pred.image_ids, pred.attention, strict=True)}
    abnormal = [b.image_id for b in test if b.label > 0]
    metrics["localization"] = localization_metrics(coords, relative, boxes, abnormal)
    metrics["single_cell"] = {
        **cell_scores,
        "native_crop_px": list(native),
        "input_px": args.tile_size,
    }
    metrics["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: metrics[k] for k in ("accuracy", "macro_sensitivity", "single_cell")}))


if __name__ == "__main__":
    main()
