"""Single-instance learning: the neural ``sil`` head and the gradient-boosting instance
classifiers of mil_cyto.instance_learning (copied labels and attention pseudo-labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mil_cyto.instance_learning import (
    UNLABELLED,
    InstanceConfig,
    attention_labels,
    copied_labels,
    fit_instance_model,
    labels_from_pseudo,
    photo_summary,
)
from mil_cyto.models import AGGREGATORS, MILModel, create_aggregator
from mil_cyto.models.sil import SingleInstanceHead, cumulative_from_logits
from mil_cyto.refine import pseudo_labels
from mil_cyto.training import FeatureBag, FitConfig, Predictions, fit, predict


def _bags(n: int, seed: int, dim: int = 4) -> list[FeatureBag]:
    """Photos of 12 instances; a CIN1 photo holds 2 instances shifted along feature 0, a
    CIN2+ photo 2 shifted further (the atypical cells); normal photos none."""
    rng = np.random.default_rng(seed)
    bags = []
    for i in range(n):
        grade = i % 3
        x = rng.normal(size=(12, dim)).astype(np.float32)
        coords = np.array([[16 * j, 0, 16 * j + 16, 16] for j in range(12)], np.int32)
        if grade:
            x[:2, 0] += 3.0 * grade
        bags.append(FeatureBag(f"p{seed}-{i}", f"p{seed}-{i}", grade, x, coords, (16, 192)))
    return bags


def test_sil_is_registered_and_keeps_the_contract() -> None:
    assert "sil" in AGGREGATORS.names()
    head = create_aggregator("sil", in_dim=4, n_classes=3, top_k=2)
    head.eval()
    x = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    out = head(x, mask)
    assert out.logits.shape == (2, 3) and out.instance_logits is not None
    assert out.instance_logits.shape == (2, 6, 2)
    assert torch.allclose(out.logits.exp().sum(1), torch.ones(2), atol=1e-4)
    assert torch.allclose(out.attention.sum(1), torch.ones(2), atol=1e-5)
    assert (out.attention[1, 3:] == 0).all() and (out.scores[1, 3:] == 0).all()
    # padding changes nothing: the second bag alone, unpadded
    alone = head(x[1:, :3])
    assert torch.allclose(alone.logits, out.logits[1:], atol=1e-5)
    # the instance logits are the log odds of the cumulative instance probabilities
    tile_logits = out.extras["tile_logits"]  # type: ignore[index]
    assert torch.allclose(
        torch.sigmoid(out.instance_logits), cumulative_from_logits(tile_logits), atol=1e-5
    )


def test_sil_top1_photo_probability_is_the_max_instance_before_training() -> None:
    head = SingleInstanceHead(4, 3, top_k=1)  # the photo calibration starts at the identity
    head.eval()
    x = torch.randn(1, 5, 4)
    out = head(x)
    cumulative = cumulative_from_logits(out.extras["tile_logits"])  # type: ignore[index]
    photo = out.logits.exp()[0]
    assert torch.isclose(1 - photo[0], cumulative[0, :, 0].max(), atol=1e-5)
    assert torch.isclose(photo[2], cumulative[0, :, 1].max(), atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "ordinal"])
def test_sil_learns_copied_labels_and_points_at_the_atypical_instances(loss: str) -> None:
    torch.manual_seed(0)
    train, val, test = _bags(48, 0), _bags(12, 1), _bags(24, 2)
    model = MILModel(None, create_aggregator("sil", in_dim=4, instance_loss=loss, top_k=2))
    fit(model, train, val, FitConfig(epochs=30, batch_bags=8, lr=5e-3), torch.device("cpu"),
        progress=False)  # fmt: skip
    pred = predict(model, test, torch.device("cpu"))
    assert (pred.preds == pred.labels).mean() >= 0.75
    abnormal = [i for i, b in enumerate(test) if b.label > 0]
    truth = np.concatenate([np.arange(12) < 2 for _ in abnormal])
    score = np.concatenate([pred.scores[i] for i in abnormal])
    assert roc_auc_score(truth, score) > 0.9


def test_sil_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="top_k"):
        SingleInstanceHead(4, top_k=0)
    with pytest.raises(ValueError, match="instance_loss"):
        SingleInstanceHead(4, instance_loss="hinge")


def test_photo_summary_is_max_topk_mean() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.6, 0.2, 0.2]])
    summary = photo_summary(probs, top=2)
    np.testing.assert_allclose(summary[:3], [0.9, 0.5, 0.3])
    np.testing.assert_allclose(summary[3:6], [0.75, 0.35, 0.25])
    np.testing.assert_allclose(summary[6:], probs.mean(0))


def test_gbm_sil_grades_photos_and_ranks_atypical_instances() -> None:
    train, test = _bags(60, 0), _bags(30, 3)
    config = InstanceConfig(max_iter=60, inner_folds=3)
    model = fit_instance_model(train, copied_labels(train), config)
    probs, scores = model.predict(test)
    assert probs.shape == (30, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    labels = np.array([b.label for b in test])
    assert (probs.argmax(1) == labels).mean() >= 0.7  # chance: 0.33
    abnormal = [i for i, b in enumerate(test) if b.label > 0]
    truth = np.concatenate([np.arange(12) < 2 for _ in abnormal])
    assert roc_auc_score(truth, np.concatenate([scores[i] for i in abnormal])) > 0.9
    assert model.history["instances"] == 60 * 12


def test_pseudo_labels_round_trip_and_leave_the_rest_out() -> None:
    bags = _bags(6, 0)
    evidence = [b.features[:, 0] for b in bags]  # the planted instances rank first
    pseudo = pseudo_labels([b.features for b in bags], [b.label for b in bags], evidence, 2)
    labels = labels_from_pseudo(pseudo, [12] * 6)
    for bag, y in zip(bags, labels, strict=True):
        if bag.label == 0:
            assert (y == 0).all()
        else:
            assert (y[:2] == bag.label).all() and (y[2:] == UNLABELLED).all()
    # from a head's predictions: its attention ranks the instances (no instance head)
    fake = Predictions(
        image_ids=[b.image_id for b in bags],
        labels=np.array([b.label for b in bags]),
        probs=np.full((6, 3), 1 / 3),
        attention=evidence,
        scores=evidence,
        loss=0.0,
    )
    assert all((a == b).all() for a, b in zip(attention_labels(bags, fake, 2), labels, strict=True))
    model = fit_instance_model(bags * 3, labels * 3, InstanceConfig(max_iter=20, inner_folds=2))
    assert model.history["instances_per_grade"] == [12 * 2 * 3, 2 * 2 * 3, 2 * 2 * 3]
