"""First-order Taylor importance (Molchanov et al. 2019) on the tiny real detector."""

from __future__ import annotations

import pytest
import torch

from detprune.criteria import get_criterion
from detprune.criteria.taylor import FirstOrderTaylor
from detprune.errors import DetpruneError
from saliency_toys import BOXES, LABELS, TinyAdapter, TinyDetector, make_batch, random_image


@pytest.fixture
def model() -> TinyDetector:
    return TinyDetector()


@pytest.fixture
def adapter() -> TinyAdapter:
    return TinyAdapter()


def batches():
    return [make_batch([random_image(i) for i in range(2)], BOXES[:2], LABELS[:2]),
            make_batch([random_image(2)], BOXES[2:], LABELS[2:])]


def reference(adapter, model, reduction: str) -> dict[str, torch.Tensor]:
    """Per batch: loss.backward() with every weight's gradient, then the products by hand."""
    model.train()
    for block in (model.stem, model.mid):
        block.bn.eval()
    totals = {"stem.conv": 0, "mid.conv": 0}
    for batch in batches():
        model.zero_grad()
        adapter.detection_loss(model, batch).backward()
        for name, block in (("stem.conv", model.stem), ("mid.conv", model.mid)):
            conv = (block.conv.weight * block.conv.weight.grad).flatten(1)
            bn = torch.stack([block.bn.weight * block.bn.weight.grad, block.bn.bias * block.bn.bias.grad], 1)
            terms = torch.cat([conv, bn], 1).detach()
            value = {"squared": terms.square().sum(1), "abs": terms.abs().sum(1), "group": terms.sum(1).square()}[
                reduction
            ]
            totals[name] = totals[name] + value
    model.zero_grad(set_to_none=True)
    model.eval()
    return totals


@pytest.mark.parametrize("reduction", ["squared", "abs", "group"])
def test_taylor_matches_the_products_computed_plainly(adapter, model, reduction):
    scores = FirstOrderTaylor(reduction=reduction, progress=False).score(adapter, model, batches())
    expected = reference(adapter, model, reduction)
    for name in ("stem.conv", "mid.conv"):
        assert scores[name].dtype == torch.float64 and scores[name].shape == (model.get_submodule(name).out_channels,)
        torch.testing.assert_close(scores[name], expected[name].to(torch.float64), rtol=1e-10, atol=0)


def test_taylor_finds_the_norm_layer_of_each_conv(adapter, model):
    criterion = FirstOrderTaylor(progress=False)
    criterion.score(adapter, model, batches())
    assert criterion.norms == {"stem.conv": model.stem.bn, "mid.conv": model.mid.bn}


def test_dead_channel_scores_zero_and_model_is_untouched(adapter, model):
    with torch.no_grad():
        model.mid.conv.weight[3] = 0
        model.mid.bn.weight[3] = 0
        model.mid.bn.bias[3] = 0
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = get_criterion("taylor", progress=False).score(adapter, model, batches())
    assert scores["mid.conv"][3] == 0 and (scores["mid.conv"][[0, 1, 2, 4]] > 0).all()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


def test_taylor_is_deterministic_and_needs_batches(adapter, model):
    first = FirstOrderTaylor(progress=False).score(adapter, model, batches())
    second = FirstOrderTaylor(progress=False).score(adapter, model, iter(batches()))
    assert all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(DetpruneError, match="at least one batch"):
        FirstOrderTaylor(progress=False).score(adapter, model, [])
    with pytest.raises(DetpruneError, match="reduction"):
        get_criterion("taylor", reduction="cube")
