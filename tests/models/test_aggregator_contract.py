"""The Aggregator contract (mil_cyto.models.base): every registered head keeps it, training
relies on it instead of probing attributes, and a module that does not keep it is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mil_cyto.models import (
    AGGREGATORS,
    Aggregator,
    HeadEnsemble,
    MILModel,
    MILOutput,
    create_aggregator,
)
from mil_cyto.training import FeatureBag, FitConfig, fit, predict

AUXILIARY = {"clam_sb", "clam_mb", "dsmil", "sil"}  # heads with a loss of their own


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_every_registered_head_keeps_the_contract(name: str) -> None:
    torch.manual_seed(0)
    head = create_aggregator(name, in_dim=8, bag_norm=True)
    assert isinstance(head, Aggregator) and head.bag_norm is True
    assert create_aggregator(name, in_dim=8).bag_norm is False
    x, mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    head.train()
    out = head(x, mask)
    assert isinstance(out, MILOutput) and out.logits.shape == (2, 3)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(2))
    assert (out.attention[1, 3:] == 0).all()
    extra = head.auxiliary_loss(out, torch.tensor([0, 2]))
    if name in AUXILIARY:
        assert extra is not None and extra.ndim == 0 and extra.requires_grad
    else:
        assert extra is None


def test_the_ensemble_keeps_it_with_the_defaults() -> None:
    members = [create_aggregator("gated_abmil", in_dim=8, bag_norm=True) for _ in range(2)]
    ensemble = HeadEnsemble(members)
    assert isinstance(ensemble, Aggregator)
    assert ensemble.bag_norm is False  # each member standardises its own input
    out = ensemble(torch.randn(1, 4, 8))
    assert ensemble.auxiliary_loss(out, torch.tensor([1])) is None


def test_a_head_without_forward_cannot_be_built() -> None:
    class NoForward(Aggregator):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoForward()  # type: ignore[abstract]


class _MeanHead(Aggregator):
    """The smallest head: a linear classifier of the bag's mean, uniform attention."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_dim, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> MILOutput:
        m = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
        weights = m.float() / m.float().sum(dim=1, keepdim=True)
        pooled = torch.bmm(weights.unsqueeze(1), x).squeeze(1)
        return MILOutput(self.classifier(pooled), weights, torch.zeros_like(weights), mask=mask)


def _bags(n: int = 9, dim: int = 4) -> list[FeatureBag]:
    rng = np.random.default_rng(0)
    return [
        FeatureBag(
            f"b{i}",
            f"p{i}",
            i % 3,
            rng.normal(size=(5, dim)).astype(np.float32),
            np.zeros((5, 4), np.int32),
            (1, 1),
        )
        for i in range(n)
    ]


def test_a_subclass_with_forward_alone_trains_and_predicts() -> None:
    """Training reads ``bag_norm`` and calls ``auxiliary_loss``; the base class's defaults
    (False, None) are enough."""
    torch.manual_seed(0)
    model = MILModel(None, _MeanHead(4))
    before = model.aggregator.classifier.weight.detach().clone()
    result = fit(model, _bags(), _bags(3), FitConfig(epochs=2), torch.device("cpu"), progress=False)
    assert result.best_epoch in (1, 2)
    assert not torch.equal(before, model.aggregator.classifier.weight)
    assert predict(model, _bags(3), torch.device("cpu")).probs.shape == (3, 3)


def test_a_module_outside_the_contract_is_refused() -> None:
    class Plain(nn.Module):  # _MeanHead's forward, without the base class
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(4, 3)

        forward = _MeanHead.forward

    model = MILModel(None, Plain())
    with pytest.raises(TypeError, match="not a mil_cyto.models.Aggregator: subclass it"):
        fit(model, _bags(), _bags(3), FitConfig(epochs=1), torch.device("cpu"), progress=False)
    with pytest.raises(TypeError, match="Aggregator"):
        predict(model, _bags(3), torch.device("cpu"))
