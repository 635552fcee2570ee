"""Self-training of the encoder on the MIL head's pseudo-labels (mil_cyto.refine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mil_cyto.data.bags import Bag
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.refine import (
    RefineConfig,
    grade_evidence,
    pseudo_labels,
    refine_encoder,
    self_train,
)
from mil_cyto.training import FeatureBag, FitConfig, Predictions, embed_bags, predict

SIZE = 32


def _cells(n: int, halo: bool, seed: int) -> np.ndarray:
    """``(n, 3, SIZE, SIZE)`` uint8: a pale cell with a dark central nucleus; with ``halo``,
    a clear ring around the nucleus (a koilocyte's sign), else cytoplasm up to it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    tiles = np.empty((n, 3, SIZE, SIZE), np.uint8)
    for i in range(n):
        radius = np.hypot(yy - rng.uniform(-1, 1), xx - rng.uniform(-1, 1))
        nucleus = rng.uniform(3.0, 4.5)
        image = np.full((SIZE, SIZE, 3), 232.0)
        image[radius < 14] = (200, 170, 190)  # cytoplasm
        if halo:
            image[(radius >= nucleus) & (radius < nucleus + 4)] = (228, 226, 230)
        image[radius < nucleus] = (90, 50, 120)
        image += rng.normal(0, 6, image.shape)
        tiles[i] = np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return tiles


def _small(width: int, out_dim: int) -> torch.nn.Module:
    return create_encoder(EncoderSpec("smallcnn", kwargs={"width": width, "out_dim": out_dim}))


def _bag(i: int, label: int, tiles: np.ndarray) -> Bag:
    coords = np.array([[4 * j, 0, 4 * j + SIZE, SIZE] for j in range(len(tiles))], np.int32)
    return Bag(f"img{i}.png", f"P{i}", label, tiles, coords, (SIZE, 4 * len(tiles) + SIZE))


def test_pseudo_labels_take_every_normal_instance_and_the_top_of_each_abnormal_photo() -> None:
    tiles = [np.full((n, 3, 2, 2), i, np.uint8) for i, n in enumerate((3, 4, 2))]
    for photo in tiles:
        photo[:, 1] = np.arange(len(photo))[:, None, None]  # channel 1 = instance index
    attention = [np.full(3, 1 / 3), np.array([0.1, 0.6, 0.1, 0.2]), np.array([0.3, 0.7])]
    pseudo = pseudo_labels(tiles, [0, 1, 2], attention, top_k=2)
    assert pseudo.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert pseudo.photo.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert pseudo.instance.tolist() == [0, 1, 2, 1, 3, 1, 0]
    # the tiles are the instances named
    assert pseudo.tiles[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert pseudo.tiles[:, 1, 0, 0].tolist() == pseudo.instance.tolist()
    assert pseudo.counts(3) == [3, 2, 2]
    # top_k beyond a bag's size takes the whole bag
    assert pseudo_labels(tiles, [0, 1, 2], attention, top_k=9).counts(3) == [3, 4, 2]
    with pytest.raises(ValueError, match="top_k"):
        pseudo_labels(tiles, [0, 1, 2], attention, top_k=0)
    with pytest.raises(ValueError, match="photo 1"):
        pseudo_labels(tiles, [0, 1, 2], [attention[0], attention[0], attention[2]])


def _separation(encoder: torch.nn.Module, tiles: np.ndarray, y: np.ndarray) -> float:
    """Distance between the two classes' mean features over the plain cells' spread (the
    root of their summed feature variances)."""
    with torch.inference_mode():
        features = encoder(torch.from_numpy(tiles)).numpy()
    gap = features[y == 1].mean(0) - features[y == 0].mean(0)
    return float(np.linalg.norm(gap) / np.sqrt(features[y == 0].var(0).sum()))


def test_refinement_teaches_the_encoder_the_pseudo_labelled_difference() -> None:
    """Pseudo-normal plain cells against a few pseudo-abnormal cells with a halo: the
    loss falls, held-out cells of the two kinds lie far apart in feature space (not so
    before, nor after the same passes at a zero learning rate, which still move the
    BatchNorm statistics), and the same seed gives the same weights."""
    normal, halo = _cells(192, False, 0), _cells(12, True, 1)
    pseudo = pseudo_labels(
        [normal, halo], [0, 1], [np.full(192, 1 / 192), np.full(12, 1 / 12)], top_k=12
    )
    held_out = np.concatenate([_cells(40, False, 2), _cells(40, True, 3)])
    kind = np.repeat([0, 1], 40)
    results = {}
    for lr in (2e-3, 2e-3, 0.0):
        torch.manual_seed(0)
        encoder = _small(8, 16)
        before = _separation(encoder, held_out, kind)
        config = RefineConfig(epochs=4, batch_size=32, lr=lr, seed=3, contrastive_weight=0.0)
        losses = refine_encoder(encoder, pseudo, 3, config, torch.device("cpu"), progress=False)
        assert not encoder.training
        results.setdefault(lr, []).append(
            (encoder.state_dict(), losses, _separation(encoder, held_out, kind))
        )
    (state_a, losses_a, after), (state_b, losses_b, _) = results[2e-3]
    assert len(losses_a) == 4 and losses_a[-1] < 0.5 * losses_a[0]
    assert losses_a == losses_b
    for key, value in state_a.items():
        torch.testing.assert_close(value, state_b[key])
    frozen = results[0.0][0][2]
    assert before < 1.5 and frozen < 1.5 and after > 3.0, (before, frozen, after)


def test_the_contrastive_term_joins_the_loss_and_changes_the_encoder() -> None:
    """With ``contrastive_weight`` > 0 each step adds SimCLR's loss on the pseudo-normal
    instances (about ln(2B - 1) at the start, B = 32), deterministically; the weights
    differ from cross-entropy alone."""
    pseudo = pseudo_labels(
        [_cells(96, False, 0), _cells(8, True, 1)], [0, 1], [np.full(96, 1 / 96), np.ones(8)], 8
    )
    states, losses = {}, {}
    for weight in (0.0, 1.0, 1.0):
        torch.manual_seed(0)
        encoder = _small(8, 16)
        config = RefineConfig(epochs=2, batch_size=32, seed=1, contrastive_weight=weight)
        run = refine_encoder(encoder, pseudo, 3, config, torch.device("cpu"), progress=False)
        assert losses.setdefault(weight, run) == run  # the same seed, the same losses
        states[weight] = encoder.state_dict()
    assert losses[1.0][0] > losses[0.0][0] + 2.0
    assert any(not torch.equal(states[0.0][k], v) for k, v in states[1.0].items())


def test_refinement_needs_both_kinds_of_instance() -> None:
    normal = _cells(8, False, 0)
    pseudo = pseudo_labels([normal], [0], [np.full(8, 1 / 8)])
    encoder = _small(4, 8)
    with pytest.raises(ValueError, match="pseudo-normal and pseudo-abnormal"):
        refine_encoder(encoder, pseudo, 3, RefineConfig(epochs=1), torch.device("cpu"))


def test_self_train_fits_a_head_labels_the_training_photos_and_moves_the_encoder() -> None:
    """One round: the first head's attention picks each abnormal photo's pseudo-abnormal
    instance (photos hold one halo cell among plain ones), the encoder changes, and what
    the run records is filled in."""
    from mil_cyto.models import create_aggregator

    rng = np.random.default_rng(0)
    bags = []
    for i in range(12):
        label = i % 2
        tiles = _cells(8, False, 10 + i)
        if label:
            tiles[int(rng.integers(8))] = _cells(1, True, 50 + i)[0]
        bags.append(_bag(i, label, tiles))
    train, val = bags[:8], bags[8:]
    torch.manual_seed(0)
    encoder = _small(8, 16)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head = create_aggregator("gated_abmil", in_dim=encoder.out_dim, n_classes=3)
    fit_config = FitConfig(epochs=2, seed=0, instance_loss_weight=1.0)
    config = RefineConfig(epochs=1, batch_size=8, seed=0)
    record, pseudo = self_train(
        encoder, head, train, val, fit_config, config, 3, torch.device("cpu"), progress=False
    )
    assert record["pseudo_labels_per_grade"] == [32, 4, 0]
    assert record["epochs"] == 1 and record["top_k"] == 1 and len(record["loss_per_epoch"]) == 1
    assert 1 <= record["first_head_best_epoch"] <= 2
    assert sorted(set(pseudo.photo[pseudo.labels.numpy() > 0].tolist())) == [1, 3, 5, 7]
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    # features of in-memory bags, as extraction would store them
    features = embed_bags(encoder, train[:2], torch.device("cpu"))
    with torch.inference_mode():
        expected = encoder(torch.from_numpy(train[0].tiles)).numpy()
    np.testing.assert_allclose(features[0].features, expected, atol=1e-5)
    assert features[0].features.dtype == np.float32
    np.testing.assert_array_equal(features[1].coords, train[1].coords)


def test_pseudo_labels_rank_a_photo_by_its_own_grade_logit() -> None:
    """With an ordinal instance head, a CIN2+ photo's instances are ranked by "grade >=
    CIN2+" and a CIN1 photo's by "grade >= CIN1", whatever the attention says: a koilocyte
    (high on the first logit only) does not take a CIN2+ photo's pseudo-label."""
    # instance logits (">= CIN1", ">= CIN2+"): a koilocyte, an HSIL cell, a normal cell
    logits = np.array([[6.0, -2.0], [4.0, 5.0], [-5.0, -6.0]], np.float32)
    attention = np.array([0.7, 0.2, 0.1], np.float32)  # attention on the koilocyte
    pred = Predictions(
        ["a", "b", "c"],
        np.array([2, 1, 0]),
        np.full((3, 3), 1 / 3),
        [attention] * 3,
        [np.log(attention)] * 3,
        0.0,
        instance_logits=[logits] * 3,
    )
    evidence = grade_evidence(pred)
    np.testing.assert_array_equal(evidence[0], logits[:, 1])
    np.testing.assert_array_equal(evidence[1], logits[:, 0])
    tiles = [np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, 1)] * 3
    chosen = pseudo_labels(tiles, [2, 1, 0], evidence, top_k=1)
    assert chosen.instance[:2].tolist() == [1, 0]  # the HSIL cell, the koilocyte
    assert chosen.labels.tolist() == [2, 1, 0, 0, 0]
    without = Predictions(["a"], np.array([2]), np.ones((1, 3)) / 3, [attention], [attention], 0.0)
    assert grade_evidence(without)[0] is attention  # no instance head: the attention


def test_predict_returns_the_instance_logits_of_heads_that_have_them() -> None:
    from mil_cyto.models import MILModel, create_aggregator

    rng = np.random.default_rng(1)
    bags = [
        FeatureBag(
            f"b{i}",
            f"p{i}",
            i % 3,
            rng.normal(size=(n, 6)).astype(np.float32),
            np.zeros((n, 4), np.int32),
            (1, 1),
        )
        for i, n in enumerate([5, 9, 3])
    ]
    torch.manual_seed(0)
    ordinal = MILModel(None, create_aggregator("gated_abmil", in_dim=6, instance_attention=True))
    pred = predict(ordinal, bags, torch.device("cpu"))
    assert pred.instance_logits is not None
    assert [x.shape for x in pred.instance_logits] == [(5, 2), (9, 2), (3, 2)]
    np.testing.assert_allclose(pred.instance_logits[1].sum(1), pred.scores[1], rtol=1e-5)
    assert (
        predict(
            MILModel(None, create_aggregator("mean", in_dim=6)), bags, torch.device("cpu")
        ).instance_logits
        is None
    )


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 11, 20, 40])
def test_one_cycle_schedule_steps_through_short_runs(steps: int) -> None:
    """A 10-step schedule once divided by zero inside OneCycleLR (warm-up of one step)."""
    from mil_cyto.refine import _optimiser

    layer = torch.nn.Linear(2, 2)
    optimizer, scheduler = _optimiser([layer], RefineConfig(epochs=1), steps_per_epoch=steps)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    assert all(np.isfinite(group["lr"]) for group in optimizer.param_groups)
