"""Head training on one run's cached features: seconds per epoch on the CPU and, where there is
one, on the GPU, at the run's own settings and with more photos per optimiser step.

The run folder gives the features (``features.h5``), the config and the split; the data folder
(the built-in synthetic set's cache unless the run named ``--data``) gives the labels. Each
setting fits a fresh head for ``--epochs`` epochs (validation every epoch, as in training) and
reports the seconds per epoch past the first (warm-up: CUDA context, kernels) and the
ratio against the CPU at the run's batch size in the same process.

    python benchmarks/head_device.py runs/my-run --epochs 4 --batch-bags 1 8 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mil_cyto.config import TrainConfig, load_config_file, resolve_config
from mil_cyto.data.manifest import read_manifest
from mil_cyto.models import MILModel
from mil_cyto.pipeline.data import resolve_data
from mil_cyto.pipeline.features import stored_bags
from mil_cyto.pipeline.recipe import create_fit_config, create_head
from mil_cyto.training import FeatureBag, fit, seed_everything


def load_split_bags(run: Path) -> tuple[list[FeatureBag], list[FeatureBag], TrainConfig]:
    """The run's training and validation photos as feature bags, and its config."""
    config = resolve_config(load_config_file(run / "config.json"), {})
    manifest = resolve_data(config, progress=False) / "manifest.csv"
    rows = {r.image_id: r for r in read_manifest(manifest)}
    split = json.loads((run / "splits.json").read_text())
    train, val = ([rows[i] for i in split[part]] for part in ("train", "val"))
    store = run / "features.h5"
    return stored_bags(store, train), stored_bags(store, val), config


def _fit_seconds(
    train, val, config: TrainConfig, device: str, batch_bags: int, epochs: int
) -> float:
    seed_everything(0)
    model = MILModel(None, create_head(config, train[0].features.shape[1]))
    fit_config = create_fit_config(config, epochs=epochs, batch_bags=batch_bags, resume_dir=None)
    start = time.perf_counter()
    fit(model, train, val, fit_config, torch.device(device), progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def seconds_per_epoch(
    train, val, config: TrainConfig, device: str, batch_bags: int, epochs: int
) -> float:
    """Wall-clock seconds per epoch (validation included) past the first: the difference of
    a fit of ``epochs + 1`` epochs and one of a single epoch (set-up and warm-up), over
    ``epochs``."""
    once = _fit_seconds(train, val, config, device, batch_bags, 1)
    return (_fit_seconds(train, val, config, device, batch_bags, epochs + 1) - once) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a frozen-mode run folder (features.h5 inside)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-bags", type=int, nargs="+", default=None)
    args = parser.parse_args()
    train, val, config = load_split_bags(args.run)
    own = config.batch_bags
    sizes = args.batch_bags or sorted({own, 8, 32})
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"{len(train)} training and {len(val)} validation photos;",
        f"torch threads {torch.get_num_threads()}",
    )
    results = {}
    for device in devices:
        for size in sizes:
            results[device, size] = seconds_per_epoch(train, val, config, device, size, args.epochs)
    base = results["cpu", own]
    print(f"{'device':<6} {'photos/step':>11} {'s/epoch':>8} {'vs cpu@' + str(own):>9}")
    for (device, size), seconds in results.items():
        print(f"{device:<6} {size:>11} {seconds:>8.3f} {seconds / base:>9.2f}")


if __name__ == "__main__":
    main()
