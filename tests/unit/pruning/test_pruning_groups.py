"""Coupled channel groups and the reduction of per-layer scores to per-group scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detprune.errors import DetpruneError
from detprune.pruning.allocation import group_scores, normalise, removal_orders
from detprune.pruning.groups import enumerate_groups

from pruning_toys import ResidualConcatNet, SplitNet, ToyAdapter, cbr, one_thread  # noqa: F401


def _groups(model, protected=("head",), imgsz=32):
    adapter = ToyAdapter(protected, imgsz=imgsz)
    return enumerate_groups(model, adapter.example_inputs(model), adapter.protected_layers(model))


def _members(coupled):
    """layer -> [(group index, positions, channels)]"""
    out = {}
    for g in coupled.groups:
        for m in g.members:
            out.setdefault(m.name, []).append((g.index, m.positions, m.channels))
    return out


def _group_with(coupled, layer):
    return next(g for g in coupled.groups if layer in g.layer_names)


@pytest.mark.parametrize("net", [ResidualConcatNet, SplitNet, "resnet18"])
def test_every_output_channel_of_a_prunable_conv_is_in_exactly_one_group(net):
    if net == "resnet18":
        torchvision = pytest.importorskip("torchvision")
        model, coupled = torchvision.models.resnet18(weights=None), None
        coupled = _groups(model, ("fc",), imgsz=64)
    else:
        model = net()
        coupled = _groups(model)
    members = _members(coupled)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name != "head":
            channels = np.concatenate([c for _, _, c in members[name]])
            assert sorted(channels.tolist()) == list(range(module.out_channels)), name


def test_residual_branches_and_concat_slices_are_coupled():
    coupled = _groups(ResidualConcatNet())
    residual = _group_with(coupled, "stem.0")
    assert set(residual.layer_names) == {"stem.0", "block1.0", "block2.0"}
    for m in residual.members:  # channel i of the stem is channel i of both branches
        assert np.array_equal(m.channels, residual.channels[m.positions])
    # the concat feeds a depthwise conv, whose channels follow the concat's: left 0..23, right 24..63
    left, right = _group_with(coupled, "left.0"), _group_with(coupled, "right.0")
    dw_left = next(m for m in left.members if m.name == "dw.0")
    dw_right = next(m for m in right.members if m.name == "dw.0")
    assert dw_left.channels.tolist() == list(range(24)) and dw_right.channels.tolist() == list(range(24, 64))
    fuse_inputs = [
        t
        for g in (left, right)
        for t in g.touches
        if t.side == "in" and getattr(t.node.module, "out_channels", 0) == 48
    ]
    assert sorted(np.concatenate([t.channels for t in fuse_inputs]).tolist()) == list(range(64))


def test_a_layer_split_between_couplings_gets_a_group_per_part():
    coupled = _groups(SplitNet())
    parts = {g.root: g for g in coupled.groups if "a.0" in g.layer_names}
    assert set(parts) == {"b.0", "a.0"}
    assert parts["b.0"].channels.size == 16 and next(
        m for m in parts["b.0"].members if m.name == "a.0"
    ).channels.tolist() == list(range(16))
    assert parts["a.0"].channels.tolist() == list(range(16, 40))


def test_protected_layers_lock_every_channel_coupled_to_them():
    model = ResidualConcatNet()
    coupled = _groups(model, ("head", "block1"))
    residual = _group_with(coupled, "stem.0")
    assert residual.locked.all() and "block1.0 is protected" in residual.lock_reason
    assert not any(g.root == "head" for g in coupled.groups)  # protected roots open no group
    assert all(not g.locked.any() for g in coupled.groups if g is not residual)


def test_grouped_convs_are_locked():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = cbr(3, 16)
            self.g = cbr(16, 16, groups=4)
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return self.head(self.g(self.a(x)))

    coupled = _groups(Grouped())
    assert _group_with(coupled, "a.0").locked.all()


def test_graph_building_leaves_the_model_as_it_was():
    model = ResidualConcatNet().train()
    model.stem[0].weight.requires_grad_(False)
    _groups(model)
    assert model.training and all(m.training for m in model.modules())
    assert not model.stem[0].weight.requires_grad and model.block1[0].weight.requires_grad


def test_group_score_is_the_mean_of_normalised_layer_scores():
    coupled = _groups(ResidualConcatNet())
    g = _group_with(coupled, "stem.0")
    gen = torch.Generator().manual_seed(0)
    scores = {name: torch.rand(32, generator=gen, dtype=torch.float64) for name in ("stem.0", "block1.0", "block2.0")}
    for how in ("l2", "l1", "max", "mean", "none"):
        got = group_scores(coupled, scores, how)[g.index]
        expected = np.mean([normalise(scores[n].numpy(), how)[g.channels] for n in scores], axis=0)
        assert np.allclose(got, expected), how
    assert np.isclose(np.linalg.norm(normalise(scores["stem.0"].numpy(), "l2")), 1.0)
    assert np.isclose(normalise(scores["stem.0"].numpy(), "max").max(), 1.0)
    assert np.isclose(normalise(scores["stem.0"].numpy(), "mean").mean(), 1.0)
    # a layer without scores is left out of the mean; a group without any stays whole
    partial = group_scores(coupled, {"stem.0": scores["stem.0"]}, "l2")
    assert np.allclose(partial[g.index], normalise(scores["stem.0"].numpy(), "l2"))
    other = _group_with(coupled, "left.0")
    assert np.isnan(partial[other.index]).all() and len(removal_orders(coupled, partial)[other.index]) == 0


def test_removal_order_is_increasing_score_then_index():
    coupled = _groups(ResidualConcatNet())
    g = _group_with(coupled, "left.0")
    values = torch.tensor([3.0, 1.0, 1.0, 2.0] * 6, dtype=torch.float64)
    order = removal_orders(coupled, group_scores(coupled, {"left.0": values}, "none"))[g.index]
    first = [p for p in order.tolist() if values[p] == 1.0]
    assert order[: len(first)].tolist() == sorted(first) and values[order].tolist() == sorted(values.tolist())


@pytest.mark.parametrize(
    "scores, message",
    [
        ({"left.0": torch.ones(5)}, "has 24 output channels"),
        ({"nowhere.0": torch.ones(5)}, "does not have"),
        ({"left.0": torch.full((24,), float("nan"))}, "NaN"),
    ],
)
def test_bad_scores_are_refused_with_one_line(scores, message):
    coupled = _groups(ResidualConcatNet())
    with pytest.raises(DetpruneError, match=message) as info:
        group_scores(coupled, scores)
    assert "\n" not in str(info.value)


def test_unknown_normalisation_is_refused():
    with pytest.raises(DetpruneError, match="normalisation"):
        normalise(np.ones(3), "softmax")


def test_an_unprepared_c2f_model_is_refused_not_corrupted():
    """Without the cv1 rewrite, Torch-Pruning maps C2f's chunk wrongly: the groups say so."""
    from detprune.adapters.yolo import YoloAdapter
    from detprune.errors import UnsupportedError

    adapter = YoloAdapter()
    model = adapter.load("yolov8n.yaml")
    with pytest.raises(UnsupportedError, match="prepare_for_pruning") as info:
        enumerate_groups(model, adapter.example_inputs(model, 64), adapter.protected_layers(model))
    assert "\n" not in str(info.value)
