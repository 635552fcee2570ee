"""The fast path of head training on cached features: within-bag standardisation computed
once (NumPy), batched prediction, and length-bucketed batches. Each must give the results of
the plain path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.models.aggregators import standardise_features, standardise_within_bag
from mil_cyto.sampling import bucket_by_length
from mil_cyto.training import FeatureBag, FitConfig, bag_norm_once, fit, predict


def _bags(n: int, dim: int = 8, seed: int = 0) -> list[FeatureBag]:
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        size = int(rng.integers(1, 30))
        label = i % 3
        x = rng.normal(size=(size, dim)).astype(np.float32) * rng.uniform(0.5, 3) + i % 5
        x[: min(size, label)] += 4.0  # a few planted tiles in abnormal bags
        coords = np.zeros((size, 4), dtype=np.int32)
        bags.append(FeatureBag(f"b{i}", f"p{i // 2}", label, x, coords, (1, 1)))
    return bags


@pytest.mark.parametrize("n", [1, 2, 3, 8, 57])
def test_numpy_standardisation_equals_the_heads(n: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32) * 4 + 2
    x[0] = 100.0  # an outlier tile
    x[:, 1] = 3.0  # a constant feature
    expected = standardise_within_bag(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(standardise_features(x), expected, atol=1e-5)


def _model(seed: int = 0) -> MILModel:
    torch.manual_seed(seed)
    head = create_aggregator("gated_abmil", in_dim=8, bag_norm=True, instance_attention=True)
    return MILModel(None, head)


def test_batched_prediction_equals_one_photo_at_a_time() -> None:
    bags, model = _bags(23), _model()
    one = predict(model, bags, torch.device("cpu"), batch_bags=1)
    batched = predict(model, bags, torch.device("cpu"), batch_bags=8)
    np.testing.assert_allclose(batched.probs, one.probs, atol=1e-5)
    assert batched.loss == pytest.approx(one.loss, abs=1e-5)
    for a, b, bag in zip(batched.attention, one.attention, bags, strict=True):
        assert a.shape == (len(bag.features),)
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(batched.scores, one.scores, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    # in the caller's order (batches are formed by bag length, results put back)
    assert batched.image_ids == [b.image_id for b in bags]
    model.eval()
    with torch.no_grad():
        direct = [torch.softmax(model(torch.from_numpy(b.features)[None]).logits, 1) for b in bags]
    np.testing.assert_allclose(batched.probs, torch.cat(direct).numpy(), atol=1e-5)


def test_standardising_once_gives_the_heads_own_outputs() -> None:
    bags, model = _bags(9), _model()
    model.eval()
    with torch.no_grad():
        plain = [model(torch.from_numpy(b.features)[None]).logits for b in bags]
        with bag_norm_once(model, bags) as (ready,):
            assert model.aggregator.bag_norm is False
            once = [model(torch.from_numpy(b.features)[None]).logits for b in ready]
    assert model.aggregator.bag_norm is True  # switched back on
    for a, b in zip(once, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bag_norm_is_switched_back_on_after_an_error() -> None:
    model = _model()
    with pytest.raises(RuntimeError, match="boom"), bag_norm_once(model, _bags(3)):
        raise RuntimeError("boom")
    assert model.aggregator.bag_norm is True


def test_fit_on_features_learns_and_restores_the_head() -> None:
    bags, model = _bags(60), _model()
    config = FitConfig(epochs=12, batch_bags=8, lr=5e-3, instance_loss_weight=1.0)
    fit(model, bags[:45], bags[45:], config, torch.device("cpu"), progress=False)
    assert model.aggregator.bag_norm is True
    train_acc = predict(model, bags[:45], torch.device("cpu")).preds == [b.label for b in bags[:45]]
    assert train_acc.mean() > 0.6  # chance is 1/3


def test_bucketing_is_a_permutation_with_homogeneous_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 160, size=200).tolist()
    order = torch.randperm(200, generator=torch.Generator().manual_seed(1)).tolist()
    bucketed = bucket_by_length(order, lengths, 8, torch.Generator().manual_seed(2))
    assert sorted(bucketed) == list(range(200))

    def padding(o: list[int]) -> int:
        batches = [o[i : i + 8] for i in range(0, len(o), 8)]
        return sum(
            max(lengths[j] for j in b) * len(b) - sum(lengths[j] for j in b) for b in batches
        )

    assert padding(bucketed) < 0.3 * padding(order)
    again = bucket_by_length(order, lengths, 8, torch.Generator().manual_seed(2))
    assert again == bucketed  # deterministic in the generator
    assert bucket_by_length(order, lengths, 1, torch.Generator()) == order
