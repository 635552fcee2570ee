"""An attention-MIL head over one very large bag, a chunk of tiles at a time.

``AttentionMIL.forward`` holds several ``(N, D)`` temporaries (within-bag standardisation,
projection, gates). For a photo of tens of thousands of tiles this evaluates the same head in
eval mode with memory ``O(chunk x D)`` plus ``O(N)`` for the per-tile outputs: the bag's
robust statistics (median, MAD) come from a pass over blocks of feature columns, and
attention pooling uses an online softmax (a running maximum, normaliser and weighted sum).
"""

from __future__ import annotations

import torch

from mil_cyto.models.aggregators import (
    BAG_NORM_EPS,
    AttentionMIL,
    MILOutput,
    robust_bag_stats,
)


def _robust_bag_stats(
    features: torch.Tensor, eps: float, columns: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """``robust_bag_stats`` of one bag ``(N, D)`` as ``(D,)`` median and scale, computed
    ``columns`` features at a time (bounded memory)."""
    parts = [
        robust_bag_stats(features[None, :, c : c + columns].float(), eps=eps)
        for c in range(0, features.shape[1], columns)
    ]
    return (
        torch.cat([m.reshape(-1) for m, _ in parts]),
        torch.cat([s.reshape(-1) for _, s in parts]),
    )


@torch.inference_mode()
def attend_in_chunks(
    head: AttentionMIL, features: torch.Tensor, chunk: int = 4096, eps: float = BAG_NORM_EPS
) -> MILOutput:
    """Evaluate ``head`` (eval mode) on one bag ``features`` ``(N, D)``, ``chunk`` tiles at a
    time. Returns what ``head(features[None])`` returns, with batch size 1: ``logits``
    ``(1, C)``, ``attention`` and ``scores`` ``(1, N)``, ``instance_logits`` ``(1, N, C - 1)``."""
    if head.training:
        raise ValueError("attend_in_chunks evaluates a trained head; call head.eval() first")
    n = features.shape[0]
    if head.bag_norm:
        median, scale = _robust_bag_stats(features, eps)
    scores = torch.empty(n, dtype=torch.float32, device=features.device)
    instance: list[torch.Tensor] = []  # stays empty without an instance head
    run_max = torch.tensor(float("-inf"), device=features.device)
    run_sum = torch.zeros((), device=features.device)
    pooled = None
    for start in range(0, n, chunk):
        x = features[start : start + chunk].float()
        if head.bag_norm:
            x = (x - median) / scale
        h = head.project(x)  # (n_c, H)
        s, inst = head.tile_scores(h)
        if inst is not None:
            instance.append(inst)
        scores[start : start + len(s)] = s
        new_max = torch.maximum(run_max, s.max())
        rescale = torch.exp(run_max - new_max)
        w = torch.exp(s - new_max)
        part = w @ h
        pooled = part if pooled is None else pooled * rescale + part
        run_sum = run_sum * rescale + w.sum()
        run_max = new_max
    assert pooled is not None
    attention = torch.softmax(scores, dim=0)
    logits = head.classifier(pooled / run_sum)
    inst = torch.cat(instance)[None] if instance else None
    return MILOutput(logits[None], attention[None], scores[None], inst, None)
