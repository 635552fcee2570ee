"""Attention-MIL aggregators: shapes, masks, padding invariance, and learning a planted bag."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.models import AGGREGATORS, MILModel, create_aggregator, pad_bags

NAMES = ["abmil", "gated_abmil"]


def _agg(name: str, in_dim: int = 16, n_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_aggregator(name, in_dim=in_dim, n_classes=n_classes, hidden_dim=32).eval()


def test_registry_names() -> None:
    assert set(NAMES) <= set(AGGREGATORS.names())
    with pytest.raises(MilCytoError, match="unknown aggregator"):
        create_aggregator("transmil_9000", in_dim=8)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_attention_without_mask(name: str) -> None:
    agg = _agg(name)
    x = torch.randn(2, 7, 16)
    out = agg(x)
    assert out.logits.shape == (2, 3)
    assert out.attention.shape == (2, 7) and out.scores.shape == (2, 7)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(2))
    assert (out.attention > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_attention_is_zero_on_padding(name: str) -> None:
    agg = _agg(name)
    x, mask = pad_bags([torch.randn(3, 16), torch.randn(6, 16), torch.randn(1, 16)])
    out = agg(x, mask)
    assert out.attention.shape == (3, 6)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(3))
    assert (out.attention[~mask] == 0).all()
    assert (out.attention[mask] > 0).all()
    assert (out.scores[~mask] == 0).all()
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.attention[2, 0], torch.tensor(1.0))


@pytest.mark.parametrize("name", NAMES)
def test_padding_changes_nothing(name: str) -> None:
    agg = _agg(name, seed=1)
    torch.manual_seed(2)
    short, long = torch.randn(4, 16), torch.randn(11, 16)
    with torch.no_grad():
        alone = agg(short[None])
        x, mask = pad_bags([short, long])
        batched = agg(x, mask)
        # padding filled with garbage instead of zeros changes nothing either
        noisy = x.clone()
        noisy[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16)
        garbage = agg(noisy, mask)
    for out in (batched, garbage):
        torch.testing.assert_close(out.logits[0], alone.logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.attention[0, :4], alone.attention[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.scores[0, :4], alone.scores[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_instance_logits_per_tile(name: str) -> None:
    agg = _agg(name, seed=4)
    short, long = torch.randn(2, 16), torch.randn(5, 16)
    x, mask = pad_bags([short, long])
    with torch.no_grad():
        out = agg(x, mask)
        alone = agg(short[None])
    if out.instance_logits is None:
        pytest.skip("aggregator built without an instance head")
    assert out.instance_logits.shape == (2, 5, 2)  # "grade >= CIN1", "grade >= CIN2+"
    torch.testing.assert_close(out.instance_logits[0, :2], alone.instance_logits[0])
    assert out.mask is not None and torch.equal(out.mask, mask)


@pytest.mark.parametrize("name", NAMES)
def test_attention_is_permutation_equivariant(name: str) -> None:
    agg = _agg(name, seed=3)
    x = torch.randn(1, 9, 16)
    perm = torch.randperm(9)
    with torch.no_grad():
        a, b = agg(x), agg(x[:, perm])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.attention[:, perm], b.attention, atol=1e-6, rtol=0)


def test_gated_differs_from_plain() -> None:
    plain, gated = _agg("abmil"), _agg("gated_abmil")
    assert sum(p.numel() for p in gated.parameters()) > sum(p.numel() for p in plain.parameters())


def test_all_padding_row_gives_zero_attention() -> None:
    agg = _agg("abmil")
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = agg(torch.randn(2, 3, 16), mask)
    assert (out.attention[1] == 0).all()
    assert torch.isfinite(out.attention).all()


def test_pad_bags_mask() -> None:
    bags = [torch.ones(2, 5), 2 * torch.ones(4, 5), 3 * torch.ones(1, 5)]
    padded, mask = pad_bags(bags)
    assert padded.shape == (3, 4, 5)
    assert mask.dtype == torch.bool
    expected = torch.tensor(
        [[True, True, False, False], [True, True, True, True], [True, False, False, False]]
    )
    assert torch.equal(mask, expected)
    assert (padded[~mask] == 0).all()
    assert (padded[0, :2] == 1).all() and (padded[1] == 2).all() and (padded[2, 0] == 3).all()


@pytest.mark.parametrize("name", NAMES)
def test_forward_tiles_with_uint8_and_small_encoder(name: str) -> None:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderSpec("smallcnn", kwargs={"width": 4, "out_dim": 12}))
    model = MILModel(encoder, create_aggregator(name, in_dim=encoder.out_dim)).eval()
    bags = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8) for n in (3, 5, 2)]
    with torch.no_grad():
        out = model.forward_tiles(bags)
        chunked = model.forward_tiles(bags, chunk=2)
        single = model.forward_tiles(bags[2:])
    assert out.logits.shape == (3, 3) and out.attention.shape == (3, 5)
    assert (out.attention[0, 3:] == 0).all() and (out.attention[2, 2:] == 0).all()
    torch.testing.assert_close(out.attention.sum(1), torch.ones(3))
    torch.testing.assert_close(chunked.logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(single.logits[0], out.logits[2], atol=1e-5, rtol=0)


def test_feature_model_has_no_encoder() -> None:
    model = MILModel(None, _agg("abmil"))
    assert model(torch.randn(1, 3, 16)).logits.shape == (1, 3)
    with pytest.raises(RuntimeError):
        model.encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def _planted(
    n_bags: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Bags of N(0, I) 16-d vectors; a positive bag holds one vector shifted along e_0."""
    direction = torch.zeros(16)
    direction[0] = 6.0
    bags, labels, planted = [], [], []
    for i in range(n_bags):
        n = int(torch.randint(6, 15, (1,), generator=generator))
        bag = torch.randn(n, 16, generator=generator)
        label = i % 2
        where = -1
        if label:
            where = int(torch.randint(0, n, (1,), generator=generator))
            bag[where] += direction
        bags.append(bag)
        labels.append(label)
        planted.append(where)
    return bags, labels, planted


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest and immune to a busy machine's contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", NAMES)
def test_learns_a_planted_problem(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    train_bags, train_y, _ = _planted(128, gen)
    test_bags, test_y, planted = _planted(100, gen)
    agg = create_aggregator(name, in_dim=16, n_classes=2, hidden_dim=32, dropout=0.0)
    opt = torch.optim.Adam(agg.parameters(), lr=5e-3)
    x, mask = pad_bags(train_bags)
    y = torch.tensor(train_y)
    agg.train()
    for _ in range(200):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(agg(x, mask).logits, y)
        loss.backward()
        opt.step()
    agg.eval()
    with torch.no_grad():
        xt, mt = pad_bags(test_bags)
        out = agg(xt, mt)
    accuracy = (out.logits.argmax(1) == torch.tensor(test_y)).float().mean().item()
    assert accuracy > 0.9
    positives = [i for i, label in enumerate(test_y) if label]
    top = out.attention.argmax(1)
    hits = sum(int(top[i]) == planted[i] for i in positives)
    assert hits / len(positives) > 0.8
