"""An attention-MIL head over one very large bag, a chunk of tiles at a time.

``AttentionMIL.forward`` holds several ``(N, D)`` temporaries (within-bag standardisation,
projection, gates). For a photo of tens of thousands of tiles this evaluates the same head in
eval mode with memory ``O(chunk x D)`` plus ``O(N)`` for the per-tile outputs: the bag's
statistics come from one ``var_mean`` pass, and attention pooling uses an online softmax
(a running maximum, normaliser and weighted sum).
"""

from __future__ import annotations

import torch

from mil_cyto.models.aggregators import AttentionMIL, MILOutput


@torch.inference_mode()
def attend_in_chunks(
    head: AttentionMIL, features: torch.Tensor, chunk: int = 4096, eps: float = 1e-5
) -> MILOutput:
    """Evaluate ``head`` (eval mode) on one bag ``features`` ``(N, D)``, ``chunk`` tiles at a
    time. Returns what ``head(features[None])`` returns, with batch size 1: ``logits``
    ``(1, C)``, ``attention`` and ``scores`` ``(1, N)``, ``instance_logits`` ``(1, N, C - 1)``."""
    if head.training:
        raise ValueError("attend_in_chunks evaluates a trained head; call head.eval() first")
    n = features.shape[0]
    if head.bag_norm:
        var, mean = torch.var_mean(features, dim=0, unbiased=False)
        scale = torch.rsqrt(var + eps)
    scores = torch.empty(n, dtype=torch.float32, device=features.device)
    instance = [] if head.instance_head is not None else None
    run_max = torch.tensor(float("-inf"), device=features.device)
    run_sum = torch.zeros((), device=features.device)
    pooled = None
    for start in range(0, n, chunk):
        x = features[start : start + chunk].float()
        if head.bag_norm:
            x = (x - mean) * scale
        h = head.project(x)  # (n_c, H)
        gate = torch.tanh(head.attention_v(h))
        if head.attention_u is not None:
            gate = gate * torch.sigmoid(head.attention_u(h))
        s = head.attention_w(gate).squeeze(-1)
        scores[start : start + len(s)] = s
        if instance is not None:
            instance.append(head.instance_head(h))
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
    inst = torch.cat(instance)[None] if instance is not None else None
    return MILOutput(logits[None], attention[None], scores[None], inst, None)
