"""Faithfulness: delete (or insert) tiles in the order a map ranks them, watch the class
probability; the random order is the control.

A faithful map makes the probability fall fast on deletion (low deletion AUC) and rise
fast on insertion (high insertion AUC). Tiles leave or enter the bag itself (the
aggregator takes bags of any size), so no pixel is painted over and no baseline image
is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import auc

from mil_cyto.models.mil_model import MILModel, pad_bags

RANDOM_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class Curves:
    """``fractions`` ``(K,)`` of tiles removed / added, from 0 to 1; ``deletion`` and
    ``insertion`` ``(K,)`` the target's probability."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return float(auc(self.fractions, self.deletion))

    @property
    def insertion_auc(self) -> float:
        return float(auc(self.fractions, self.insertion))


@torch.no_grad()
def tile_curves(
    model: MILModel, features: torch.Tensor, order: np.ndarray, target: int, n_points: int = 21
) -> Curves:
    """Curves for one photo: ``features`` ``(N, D)`` its tile embeddings, ``order`` ``(N,)``
    tile indices, most important first. Deletion keeps at least one tile (a bag cannot be
    empty), insertion starts from one."""
    n = len(order)
    fractions = np.linspace(0.0, 1.0, n_points)
    counts = np.round(fractions * n).astype(int)
    order_t = torch.as_tensor(np.asarray(order), device=features.device)
    deleted = [features[order_t[min(k, n - 1) :]] for k in counts]
    inserted = [features[order_t[: max(k, 1)]] for k in counts]
    padded, mask = pad_bags(deleted + inserted)
    model.eval()
    probs = torch.softmax(model.aggregator(padded, mask).logits.float(), dim=1)[:, target]
    curve = probs.cpu().numpy()
    return Curves(fractions, curve[:n_points], curve[n_points:])


def faithfulness(
    model: MILModel,
    features: torch.Tensor,
    tile_scores: np.ndarray,
    target: int,
    *,
    seeds: Sequence[int] = RANDOM_SEEDS,
    n_points: int = 21,
) -> dict[str, float]:
    """Deletion / insertion AUCs of the ranking by ``tile_scores`` ``(N,)`` (highest first)
    and of random orders (mean over ``seeds``)."""
    ranked = tile_curves(
        model, features, np.argsort(-np.asarray(tile_scores), kind="stable"), target, n_points
    )
    randoms = [
        tile_curves(
            model,
            features,
            np.random.default_rng(s).permutation(len(tile_scores)),
            target,
            n_points,
        )
        for s in seeds
    ]
    return {
        "deletion_auc": ranked.deletion_auc,
        "insertion_auc": ranked.insertion_auc,
        "random_deletion_auc": float(np.mean([c.deletion_auc for c in randoms])),
        "random_insertion_auc": float(np.mean([c.insertion_auc for c in randoms])),
    }
