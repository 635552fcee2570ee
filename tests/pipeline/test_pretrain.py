"""Self-supervised (SimCLR) pretraining of the tile encoder: views, loss, training loop."""

from __future__ import annotations

import torch

from mil_cyto.augment import orient_and_stain
from mil_cyto.encoders import create_encoder
from mil_cyto.pretrain import PretrainConfig, nt_xent, pretrain_encoder, random_crop_resize


def _tiles(n: int = 24, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Glass with one dark disc per tile, of a radius that varies with the tile."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    tiles = torch.full((n, 3, size, size), 235, dtype=torch.uint8)
    for i in range(n):
        r = 3 + i % 8
        cx, cy = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        tiles[i][:, disc] = torch.tensor([90, 40, 110], dtype=torch.uint8)[:, None]
    return tiles


def test_views_keep_shape_and_range_and_are_seeded() -> None:
    tiles = _tiles()
    a = orient_and_stain(tiles, torch.Generator().manual_seed(1), per_tile=True)
    b = orient_and_stain(tiles, torch.Generator().manual_seed(1), per_tile=True)
    c = orient_and_stain(tiles, torch.Generator().manual_seed(2), per_tile=True)
    assert a.shape == tiles.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # glass stays near white under the stain jitter (its optical density is near 0)
    assert float(a[:, :, 0, 0].min()) > 0.8


def test_crop_resize_keeps_the_size_and_is_identity_at_full_side() -> None:
    x = torch.rand(4, 3, 32, 32)
    out = random_crop_resize(x, torch.Generator().manual_seed(0), min_crop=0.5)
    assert out.shape == x.shape
    torch.testing.assert_close(random_crop_resize(x, torch.Generator(), min_crop=1.0), x)


def test_nt_xent_prefers_matching_pairs() -> None:
    torch.manual_seed(0)
    z = torch.randn(16, 64)
    matched = nt_xent(z, z + 0.01 * torch.randn_like(z), temperature=0.2)
    shuffled = nt_xent(z, z[torch.randperm(16)], temperature=0.2)
    assert float(matched) + 1.0 < float(shuffled)
    # the loss of a batch of two with identical views equals the closed form
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -torch.log(torch.exp(torch.tensor(1 / t)) / (torch.exp(torch.tensor(1 / t)) + 2))
    torch.testing.assert_close(nt_xent(a, a, t), expected)


def test_pretraining_lowers_the_loss_moves_weights_and_is_deterministic() -> None:
    tiles = _tiles(48)
    config = PretrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        encoder = create_encoder("smallcnn")
        before = {k: v.clone() for k, v in encoder.state_dict().items()}
        losses = pretrain_encoder(encoder, tiles, config, torch.device("cpu"), progress=False)
        runs.append((encoder.state_dict(), losses))
        assert not encoder.training
        assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    (state_a, losses_a), (state_b, losses_b) = runs
    assert len(losses_a) == 3 and losses_a[-1] < losses_a[0]
    assert losses_a == losses_b
    for key, value in state_a.items():
        torch.testing.assert_close(value, state_b[key])
