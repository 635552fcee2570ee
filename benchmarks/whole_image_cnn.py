"""How a whole-image CNN at 512x512 (the reference study's input) does on a data set.

Trains a torchvision network from scratch (no pretrained weights exist offline) on the same
patient-disjoint split that ``mil_cyto.train`` uses, selects the epoch on validation, and
prints the test metrics as JSON. A measurement for context, not the package's baseline
command (that is ``mil_cyto.baseline``, still to come).

    python benchmarks/whole_image_cnn.py --data DIR [--arch resnet18] [--epochs 6]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.splits import fixed_split, train_val_test_split
from mil_cyto.metrics import classification_metrics


def load_resized(paths: list[Path], size: int) -> torch.Tensor:
    """Photos squashed to ``size`` x ``size`` (as the study did): ``(N, 3, size, size)`` uint8."""
    arrays = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def evaluate(model: torch.nn.Module, x: torch.Tensor, batch: int) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(part.float() / 255.0) for part in x.split(batch)])
    return logits.argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows = read_manifest(args.data / "manifest.csv")
    split = fixed_split([r.split for r in rows]) or train_val_test_split(
        [r.label for r in rows], [r.patient_id for r in rows]
    )  # a manifest 'split' column (cell-disjoint mosaics) wins over the patient split
    x = load_resized([r.image for r in rows], args.size)
    y = torch.tensor([r.label for r in rows])
    model = getattr(torchvision.models, args.arch)(num_classes=3)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    train = torch.from_numpy(split.train)
    best, best_state, start = -1.0, None, time.perf_counter()
    for _epoch in range(args.epochs):
        model.train()
        for idx in train[torch.randperm(len(train))].split(args.batch):
            xb = x[idx].float() / 255.0
            if torch.rand(1) < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        decay.step()
        val = classification_metrics(y[split.val].numpy(), evaluate(model, x[split.val], 16))
        if (val["macro_sensitivity"] or 0) > best:
            best, best_state = val["macro_sensitivity"] or 0, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = classification_metrics(y[split.test].numpy(), evaluate(model, x[split.test], 16))
    result = {k: test[k] for k in ("accuracy", "macro_sensitivity", "macro_specificity", "n_test")}
    result.update(
        arch=args.arch,
        size=args.size,
        epochs=args.epochs,
        train_seconds=round(time.perf_counter() - start, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
