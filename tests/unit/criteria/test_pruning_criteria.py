"""The data-free criteria: L1 / L2 filter magnitude, BatchNorm scale, random."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detprune.adapters.yolo import YoloAdapter
from detprune.criteria import available_criteria, get_criterion
from detprune.errors import DetpruneError

from pruning_toys import ResidualConcatNet, ToyAdapter, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model = ResidualConcatNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
    return ToyAdapter(("head",)), model


def test_registered_names():
    names = set(available_criteria())
    assert {"l1", "l2", "magnitude", "bn-scale", "bn", "random"} <= names
    assert all(not get_criterion(n).needs_data for n in ("l1", "l2", "magnitude", "bn-scale", "random"))


def test_filter_norms_follow_the_definition(toy):
    adapter, model = toy
    l1 = get_criterion("l1").score(adapter, model, [])
    l2 = get_criterion("l2").score(adapter, model, [])
    assert set(l1) == set(adapter.activation_points(model)) and "head" not in l1
    w = model.left[0].weight.detach().double()
    assert torch.allclose(l1["left.0"], w.abs().sum((1, 2, 3)))
    assert torch.allclose(l2["left.0"], w.square().sum((1, 2, 3)).sqrt())
    assert all(v.dtype == torch.float64 for v in l1.values())
    magnitude = get_criterion("magnitude").score(adapter, model, [])
    assert all(torch.equal(magnitude[k], l1[k]) for k in l1)


def test_bn_scale_reads_the_norm_after_each_conv(toy):
    adapter, model = toy
    scores = get_criterion("bn-scale").score(adapter, model, [])
    assert torch.allclose(scores["left.0"], model.left[1].weight.detach().abs().double())
    assert torch.allclose(scores["dw.0"], model.dw[1].weight.detach().abs().double())
    assert torch.equal(get_criterion("bn").score(adapter, model, [])["left.0"], scores["left.0"])


def test_bn_scale_leaves_out_convs_without_a_norm():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.b(self.a(x))))

    criterion = get_criterion("bn-scale")
    scores = criterion.score(ToyAdapter(("head",)), Plain(), [])
    assert set(scores) == {"a.0"} and criterion.unscored == ["b"]
    with pytest.raises(DetpruneError, match="no prunable conv is followed by a BatchNorm"):
        criterion.score(ToyAdapter(("head", "a")), Plain(), [])


def test_random_is_seeded_and_private(toy):
    adapter, model = toy
    torch.manual_seed(123)
    before = torch.rand(1)
    a = get_criterion("random", seed=3).score(adapter, model, [])
    torch.manual_seed(123)
    b = get_criterion("random", seed=3).score(adapter, model, [])
    assert torch.equal(torch.rand(1), before)  # the global generator was not consumed
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = get_criterion("random", seed=4).score(adapter, model, [])
    assert not torch.equal(a["left.0"], c["left.0"])
    assert all(v.shape == (model.get_submodule(k).out_channels,) for k, v in a.items())


@pytest.mark.parametrize("name", ["l1", "bn-scale", "random"])
def test_data_free_criteria_score_every_yolo_activation_point(name):
    adapter = YoloAdapter()
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml"))
    scores = get_criterion(name).score(adapter, model, [])
    points = adapter.activation_points(model)
    assert set(scores) == set(points)
    assert all(scores[n].shape == (model.get_submodule(n).out_channels,) for n in points)
