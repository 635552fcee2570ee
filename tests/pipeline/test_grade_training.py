"""Grade-aware training: ordinal loss, balanced sampling, tile sub-sampling, checkpointing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mil_cyto.data.bags import Bag
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.losses import bag_loss, cumulative_probs, ordinal_bag_loss
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.sampling import epoch_order, subsample_bag
from mil_cyto.training import FitConfig, fit


def test_ordinal_loss_charges_far_errors_more_than_near_ones() -> None:
    target = torch.tensor([0, 0])
    near = torch.log(torch.tensor([[0.2, 0.8, 1e-6]]))  # normal called CIN1
    far = torch.log(torch.tensor([[0.2, 1e-6, 0.8]]))  # normal called CIN2+
    assert ordinal_bag_loss(far, target[:1]) > 1.5 * ordinal_bag_loss(near, target[:1])
    # plain cross-entropy cannot tell them apart
    torch.testing.assert_close(F.cross_entropy(far, target[:1]), F.cross_entropy(near, target[:1]))


def test_ordinal_loss_basics() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, 1, 2, 2, 1])
    cum = cumulative_probs(logits)
    assert cum.shape == (5, 2) and (cum[:, 0] >= cum[:, 1]).all()
    loss = ordinal_bag_loss(logits, target, torch.tensor([1.0, 2.0, 3.0]))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    perfect = torch.tensor([[20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]])
    assert ordinal_bag_loss(perfect, torch.tensor([0, 1, 2])) < 1e-3
    with pytest.raises(ValueError):
        bag_loss(logits, target, None, "hinge")


def test_balanced_order_evens_out_classes() -> None:
    labels = [0] * 150 + [1] * 36 + [2] * 75
    order = epoch_order(labels, torch.Generator().manual_seed(0), balanced=True)
    counts = np.bincount(np.asarray(labels)[order], minlength=3) / len(order)
    assert len(order) == len(labels)
    assert np.all(np.abs(counts - 1 / 3) < 0.08), counts
    plain = epoch_order(labels, torch.Generator().manual_seed(0), balanced=False)
    assert sorted(plain) == list(range(len(labels)))


def _bag(n: int, label: int = 1, size: int = 32, seed: int = 0) -> Bag:
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    coords = np.stack([np.arange(n), np.zeros(n), np.arange(n) + size, np.full(n, size)], 1)
    return Bag(f"img{seed}", f"p{seed}", label, tiles, coords.astype(np.int32), (size, n + size))


def test_subsample_keeps_tiles_and_coords_aligned() -> None:
    bag = _bag(50)
    sub = subsample_bag(bag, 10, torch.Generator().manual_seed(0))
    assert len(sub.tiles) == 10 and len(sub.coords) == 10
    for tile, box in zip(sub.tiles, sub.coords, strict=True):
        np.testing.assert_array_equal(tile, bag.tiles[box[0]])
    assert subsample_bag(bag, 0, torch.Generator()) is bag
    assert len(bag.tiles) == 50  # the original is untouched


def _saved_bytes(model: MILModel, tiles: torch.Tensor, **kw: object) -> int:
    """Bytes autograd keeps for backward during one forward pass (the activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model.forward_tiles([tiles], **kw)
    out.logits.sum().backward()
    return total


def test_checkpointing_bounds_activation_memory() -> None:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 8, "out_dim": 16}))
    model = MILModel(encoder, create_aggregator("abmil", in_dim=16)).train()
    tiles = torch.from_numpy(_bag(512, size=48).tiles)
    plain = _saved_bytes(model, tiles)
    model.zero_grad()
    bounded = _saved_bytes(model, tiles, chunk=64, checkpoint=True)
    assert bounded < plain / 3, (bounded, plain)
    # the same gradients either way (eval mode: BatchNorm uses running statistics)
    model.eval()
    model.zero_grad()
    _saved_bytes(model, tiles)
    g1 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    _saved_bytes(model, tiles, chunk=64, checkpoint=True)
    g2 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_2000_tile_bag_trains_with_bounded_memory() -> None:
    """One fine-tuning epoch on a 2,000-tile photo: sub-sampled to 256 tiles, encoded in
    checkpointed chunks of 64; autograd keeps < 16 MB, a sixth of what the 2,000 tiles' float
    inputs alone would take (2000 x 3 x 64 x 64 x 4 B = 98 MB)."""
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 8, "out_dim": 16}))
    model = MILModel(encoder, create_aggregator("gated_abmil", in_dim=16))
    big = _bag(2000, label=2, size=64, seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    config = FitConfig(epochs=1, max_tiles=256, chunk=64, checkpoint=True, augment=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fit(
            model, [big], [_bag(20, label=2, size=64, seed=2)], config, "cpu", progress=False
        )
    assert result.best_epoch == 1
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed
    assert sum(saved) < 16e6, sum(saved)
