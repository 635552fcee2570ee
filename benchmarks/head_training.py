"""Head training on cached features: mil-cyto's loop vs torchmil's ABMIL, same data and folds.

Synthetic features at the reference study's size: 2,619 bags (photos) of 100 +- 20 tiles of
512-d features from 550 patients, graded normal / CIN1 / CIN2+ in the study's proportions
(1,504 / 360 / 755). Every tile is patient-level "stain" plus noise; an abnormal photo holds
a few atypical tiles shifted along a grade direction (CIN2+ further than CIN1). Folds are
patient-disjoint (``mil_cyto.data.splits.patient_folds``: train / val / test 60 / 20 / 20).

Both heads train with AdamW (same lr, epochs and bags per step, padded bags with masks) and
keep the epoch with the best validation macro sensitivity; the test fold is scored once.
- ``mil_cyto``: ``training.fit`` with the package's default head (gated ABMIL, within-bag
  standardisation, ordinal instance loss, class weights);
- ``torchmil``: ``torchmil.models.ABMIL`` (attention dim 128) with its classifier widened to
  three grades, trained with cross-entropy by the loop below.

Speed is seconds per epoch over 2,619 bags (training time, validation included, per
training bag, times 2,619), wall clock and CPU time of this process (the latter less
sensitive to other processes on a shared machine). ``pip install torchmil`` (the ``bench`` extra).

    OMP_NUM_THREADS=1 python benchmarks/head_training.py --folds 2 --epochs 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from mil_cyto.config import TrainConfig
from mil_cyto.data.splits import patient_folds
from mil_cyto.metrics import classification_metrics
from mil_cyto.models import MILModel, pad_bags
from mil_cyto.pipeline.recipe import create_fit_config, create_head
from mil_cyto.training import FeatureBag, fit, predict

N_BAGS, N_PATIENTS, DIM = 2619, 550, 512
COUNTS = (1504, 360, 755)
METRICS = ("s_per_epoch_2619", "cpu_s_per_epoch_2619", "accuracy", "macro_sensitivity")


def make_bags(seed: int = 0) -> list[FeatureBag]:
    """The synthetic bags described in the module docstring (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), COUNTS)
    rng.shuffle(labels)
    patients = rng.integers(0, N_PATIENTS, size=N_BAGS)
    # a patient's photos share a grade (the highest of them), as in the study
    patient_grade = {p: labels[patients == p].max() for p in np.unique(patients)}
    labels = np.array([patient_grade[p] for p in patients])
    stain = rng.normal(0.0, 0.5, size=(N_PATIENTS, DIM)).astype(np.float32)
    direction = rng.normal(size=(3, DIM)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    bags = []
    for i in range(N_BAGS):
        n = int(np.clip(rng.normal(100, 20), 40, 160))
        feats = rng.normal(size=(n, DIM)).astype(np.float32) + stain[patients[i]]
        if labels[i] > 0:
            k = int(rng.integers(2, 8))
            idx = rng.choice(n, size=k, replace=False)
            feats[idx] += (1.5 + 1.0 * (labels[i] - 1)) * 2.0 * direction[labels[i]]
            if labels[i] == 2:
                feats[idx[: k // 2]] += 2.0 * direction[1]
        coords = np.zeros((n, 4), dtype=np.int32)
        bags.append(FeatureBag(f"b{i}", f"P{patients[i]}", int(labels[i]), feats, coords, (1, 1)))
    return bags


class TorchmilHead(torch.nn.Module):
    """torchmil's ABMIL with a three-way classifier (torchmil's is binary)."""

    def __init__(self) -> None:
        super().__init__()
        from torchmil.models import ABMIL

        self.model = ABMIL(in_shape=(DIM,), att_dim=128)
        self.model.classifier = torch.nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, mask)  # (B, 3): its squeeze(-1) leaves three logits alone


def _batches(bags: list[FeatureBag], order: list[int], size: int):
    for i in range(0, len(order), size):
        part = [bags[j] for j in order[i : i + size]]
        x, mask = pad_bags([torch.from_numpy(b.features) for b in part])
        yield x, mask, torch.tensor([b.label for b in part])


def _evaluate(model: torch.nn.Module, bags: list[FeatureBag]) -> dict:
    model.eval()
    with torch.inference_mode():
        preds = [
            model(x, mask).argmax(1) for x, mask, _ in _batches(bags, list(range(len(bags))), 64)
        ]
    return classification_metrics(np.array([b.label for b in bags]), torch.cat(preds).numpy())


def train_torchmil(train, val, epochs: int, batch: int, lr: float, seed: int) -> TorchmilHead:
    torch.manual_seed(seed)
    model = TorchmilHead()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    best, best_state = None, None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        for x, mask, y in _batches(train, order, batch):
            loss = F.cross_entropy(model(x, mask), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        key = _evaluate(model, val)["macro_sensitivity"] or 0.0
        if best is None or key > best:
            best, best_state = key, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=2, help="folds run (of 5)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-bags", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    bags = make_bags()
    folds = patient_folds([b.label for b in bags], [b.patient_id for b in bags], k=5)
    rows = []
    for f, split in enumerate(folds[: args.folds]):
        train, val, test = split.take(bags)

        torch.manual_seed(f)
        defaults = TrainConfig()  # the head and losses of `python -m mil_cyto.train`
        model = MILModel(None, create_head(defaults, DIM))
        config = create_fit_config(
            defaults, epochs=args.epochs, batch_bags=args.batch_bags, lr=args.lr, seed=f
        )
        cpu = time.process_time()
        result = fit(model, train, val, config, torch.device("cpu"), progress=False)
        ours_cpu = (time.process_time() - cpu) / (args.epochs * len(train)) * N_BAGS
        ours = classification_metrics(
            np.array([b.label for b in test]), predict(model, test, torch.device("cpu")).preds
        )
        ours_epoch = result.seconds / (args.epochs * len(train)) * N_BAGS

        clock, cpu = time.perf_counter(), time.process_time()
        theirs_model = train_torchmil(train, val, args.epochs, args.batch_bags, args.lr, f)
        theirs_epoch = (time.perf_counter() - clock) / (args.epochs * len(train)) * N_BAGS
        theirs_cpu = (time.process_time() - cpu) / (args.epochs * len(train)) * N_BAGS
        theirs = _evaluate(theirs_model, test)
        row = {
            "fold": f,
            "n_train": len(train),
            "n_test": len(test),
            "mil_cyto": {
                "s_per_epoch_2619": round(ours_epoch, 2),
                "cpu_s_per_epoch_2619": round(ours_cpu, 2),
                "accuracy": round(ours["accuracy"], 3),
                "macro_sensitivity": round(ours["macro_sensitivity"], 3),
            },
            "torchmil_abmil": {
                "s_per_epoch_2619": round(theirs_epoch, 2),
                "cpu_s_per_epoch_2619": round(theirs_cpu, 2),
                "accuracy": round(theirs["accuracy"], 3),
                "macro_sensitivity": round(theirs["macro_sensitivity"], 3),
            },
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        key: {
            metric: round(float(np.mean([r[key][metric] for r in rows])), 3) for metric in METRICS
        }
        for key in ("mil_cyto", "torchmil_abmil")
    }
    summary["settings"] = {
        "folds": args.folds,
        "epochs": args.epochs,
        "batch_bags": args.batch_bags,
        "torch_threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
