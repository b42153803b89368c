"""Allocations (global, uniform, cost) and widths from one criterion with channels from another."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters.yolo import YoloAdapter
from detprune.cli import main
from detprune.criteria import get_criterion
from detprune.pruning import prune_model
from detprune.pruning.allocation import group_scores, removal_orders
from detprune.pruning.flops import CostModel, measure
from detprune.pruning.groups import enumerate_groups

from pruning_toys import (  # noqa: F401 (one_thread: an autouse fixture)
    ToyAdapter,
    assert_same_outputs,
    cbr,
    cut_exactly_what_cost_removes,
    one_thread,
    randomise_norms,
)

IMGSZ = 96
YOLO = ["yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"]
TARGETS = [{"target_flops": 0.5}, {"target_params": 0.5}]


def _achieved(result, target: dict) -> tuple[float, float]:
    kind, value = next(iter(target.items()))
    return result.achieved[kind.removeprefix("target_")], value


def _yolo(spec: str):
    adapter = YoloAdapter()
    torch.manual_seed(0)
    model = adapter.prepare_for_pruning(adapter.load(spec)).eval()
    return adapter, model, get_criterion("l1").score(adapter, model, [])


def _rcnn(arch: str):
    from detprune.adapters.rcnn import checkpoint as ckpt
    from detprune.adapters.rcnn import RcnnAdapter
    from rcnn_models import CLASSES, randomize_norms, shrink_for_cpu, small_model

    adapter = RcnnAdapter()
    if arch == "mobilenet":
        model, imgsz = small_model(seed=2), (96, 128)
    else:
        torch.manual_seed(0)
        model, imgsz = (
            shrink_for_cpu(ckpt.build(arch, len(CLASSES) + 1, pretrained_layout=True), proposals=16).eval(),
            (64, 64),
        )
    model = adapter.prepare_for_pruning(randomize_norms(model)).eval()
    return adapter, model, get_criterion("l1").score(adapter, model, []), imgsz


@pytest.fixture(scope="module")
def v8n():
    return _yolo("yolov8n.yaml")


# --- the cost allocation meets the targets, and its cut is exact ----------------------------


@pytest.mark.parametrize("spec", YOLO)
def test_cost_allocation_meets_flops_and_params_targets_on_yolo(spec):
    adapter, model, scores = _yolo(spec)
    for target in TARGETS:
        result = prune_model(adapter, copy.deepcopy(model), scores, allocation="cost", imgsz=IMGSZ, **target)
        achieved, wanted = _achieved(result, target)
        assert abs(achieved - wanted) <= 0.02 * wanted, (target, achieved)
        assert result.predicted == result.after  # the cost model prices the cost cut exactly
        assert result.settings["allocation"] == "cost" and result.settings["cost"] == next(iter(target))[7:]
        changed = [a for n, a in result.channels_after.items() if a != result.channels_before[n]]
        assert changed and all(a % 8 == 0 and a >= 8 for a in changed)


@pytest.mark.parametrize("arch", ["mobilenet", "fasterrcnn_resnet50_fpn"])
def test_cost_allocation_meets_flops_and_params_targets_on_faster_rcnn(arch):
    adapter, model, scores, imgsz = _rcnn(arch)
    for target in ({"target_flops": 0.6}, {"target_params": 0.6}):
        result = prune_model(adapter, copy.deepcopy(model), scores, allocation="cost", imgsz=imgsz, **target)
        achieved, wanted = _achieved(result, target)
        assert abs(achieved - wanted) <= 0.02 * wanted, (target, achieved)
        assert result.predicted == result.after


def test_a_cost_cut_of_yolov8n_is_exact(v8n):
    adapter, model, scores = v8n
    model = copy.deepcopy(model)
    randomise_norms(model, 4)
    before, after = cut_exactly_what_cost_removes(adapter, model, scores, IMGSZ, lambda m, x, ref=None: m(x))
    assert_same_outputs(before, after)


def test_a_cost_cut_of_faster_rcnn_mobilenet_is_exact():
    from detprune.adapters.rcnn.coupling import dense_outputs
    from rcnn_models import assert_same

    adapter, model, scores, imgsz = _rcnn("mobilenet")
    kept = {}

    def outputs(m, x, ref=None):
        images = x[0] if isinstance(x, (tuple, list)) else x
        out = dense_outputs(m, images, None if ref is None else kept["proposals"])
        kept.setdefault("proposals", out.proposals)
        return out

    # the box head dominates the FLOPs: the cost cut goes to the FPN width (RPN head, fc6 columns), then fc6
    before, after = cut_exactly_what_cost_removes(adapter, model, scores, imgsz, outputs, flops=0.3, groups=2)
    for a, b in zip(before.tensors(), after.tensors()):
        assert_same(b, a)


def test_local_savings_equal_whole_model_differences(v8n):
    """The knapsack prices one group's step on the nodes it touches; that must equal predict()'s difference."""
    adapter, model, scores = v8n
    example = adapter.example_inputs(model, IMGSZ)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model))
    orders = removal_orders(coupled, group_scores(coupled, scores))
    cost = CostModel(coupled, measure(model, example), orders)
    rng = np.random.default_rng(0)
    removal = {g: int(rng.integers(0, len(o) // 2 + 1)) for g, o in orders.items() if len(o)}
    for g in list(removal)[::3]:
        count = removal[g] + 8 if removal[g] + 8 <= len(orders[g]) else removal[g] - 1
        d_params, d_macs = cost.change(removal, g, count)
        whole = cost.predict({**removal, g: count}), cost.predict(removal)
        assert d_params == whole[0].params - whole[1].params
        assert abs(d_macs - (whole[0].macs - whole[1].macs)) <= 1  # predict rounds MACs to an integer


# --- cost against global on a network with one dear and one cheap layer ---------------------


class DearAndCheap(nn.Module):
    """Two equally wide branches of the input: ``dear`` a 3x3 conv at full resolution, ``cheap``
    a 1x1 conv at a quarter of it; each read by its own (protected) 1x1 head."""

    def __init__(self):
        super().__init__()
        self.dear = cbr(3, 32, k=3)  # 32x32 output
        self.cheap = cbr(3, 32, k=1, s=4)  # 8x8 output
        self.dear_head = nn.Conv2d(32, 4, 1)
        self.cheap_head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return [self.dear_head(self.dear(x)), self.cheap_head(self.cheap(x))]


def test_cost_keeps_more_importance_than_global_at_equal_flops():
    """Known answer. On a 32x32 input, a channel of ``dear`` costs 9*3*1024 = 27648 conv MACs plus
    its norm, activation and 4*1024 head MACs (about 35k in all); a channel of ``cheap`` costs
    3*64 conv MACs plus 4*64 head MACs and its norm (under 1k), so a channel of ``dear`` is worth
    over 30 of ``cheap``. Both layers get the same scores (channel i scores 1 + i/32), so their
    normalised scores are equal channel by channel.

    ``global`` ranks by score alone: it takes the lowest-scored channels of both layers in equal
    numbers (n from each, within one at the threshold). To save the same 40% of the FLOPs it
    must take about as many channels of ``dear`` as ``cost`` does, plus n of ``cheap`` that save
    almost nothing. ``cost`` takes channels of ``dear`` only (each of its blocks saves 30x more
    per unit of importance), so it removes about half as many channels, each of them among the
    least important, and keeps more total importance.
    """
    adapter = ToyAdapter(("dear_head", "cheap_head"), imgsz=32)
    raw = 1 + torch.arange(32, dtype=torch.float64) / 32
    scores = {"dear.0": raw, "cheap.0": raw.clone()}
    options = dict(target_flops=0.6, round_to=1, min_channels=1, imgsz=32)
    kept = {}
    for allocation in ("global", "cost"):
        torch.manual_seed(0)
        result = prune_model(adapter, DearAndCheap(), scores, allocation=allocation, **options)
        assert abs(result.achieved["flops"] - 0.6) <= 0.02 * 0.6
        widths = {n: result.channels_after[n] for n in ("dear.0", "cheap.0")}
        lost = {r.root: r.channels for r in result.removed}
        kept[allocation] = sum(float(raw.sum() - raw[lost.get(n, [])].sum()) for n in widths)
        if allocation == "cost":
            assert widths["cheap.0"] == 32 and widths["dear.0"] < 32
        else:
            assert abs((32 - widths["dear.0"]) - (32 - widths["cheap.0"])) <= 1 and widths["cheap.0"] < 32
    assert kept["cost"] > kept["global"]


# --- uniform keeps the same fraction of every group -----------------------------------------


def _kept_per_group(adapter, model, result, imgsz):
    coupled = enumerate_groups(model, adapter.example_inputs(model, imgsz), adapter.protected_layers(model))
    gone = {r.root: len(r.channels) for r in result.removed}
    return [(g.size, g.size - gone.get(g.root, 0), len(g.prunable)) for g in coupled.prunable_groups()]


def _same_fraction(groups, round_to: int, min_channels: int, max_ratio: float) -> bool:
    """Some fraction f has every group within one rounding step of f x its size (groups at a limit aside)."""
    low, high = 0.0, 1.0
    for size, kept, removable in groups:
        floor = max(min_channels, int(np.ceil(size * (1 - max_ratio))), size - removable)
        if kept - round_to < floor:  # at (or within a step of) its floor: the limit decided, not f
            continue
        low, high = max(low, (kept - round_to) / size), min(high, (kept + round_to) / size)
    return low < high


def test_uniform_keeps_the_same_fraction_of_every_group_and_global_does_not(v8n):
    adapter, model, scores = v8n
    fractions = {}
    for allocation in ("uniform", "global"):
        result = prune_model(
            adapter, copy.deepcopy(model), scores, allocation=allocation, target_flops=0.5, imgsz=IMGSZ
        )
        assert result.settings["allocation"] == allocation
        fractions[allocation] = _same_fraction(_kept_per_group(adapter, model, result, IMGSZ), 8, 8, 0.8)
    assert fractions == {"uniform": True, "global": False}


def test_global_ranking_false_is_uniform(v8n):
    adapter, model, scores = v8n
    a = prune_model(adapter, copy.deepcopy(model), scores, global_ranking=False, ratio=0.3, imgsz=IMGSZ)
    b = prune_model(adapter, copy.deepcopy(model), scores, allocation="uniform", ratio=0.3, imgsz=IMGSZ)
    assert [r.as_dict() for r in a.removed] == [r.as_dict() for r in b.removed] and a.settings[
        "allocation"
    ] == "uniform"


# --- widths from one criterion, channels from another ---------------------------------------


def test_widths_come_from_the_other_criterion_and_channels_from_its_own(v8n):
    adapter, model, l1 = v8n
    rand = get_criterion("random", seed=1).score(adapter, model, [])
    by_l1 = prune_model(adapter, copy.deepcopy(model), l1, allocation="cost", target_flops=0.5, imgsz=IMGSZ)
    mixed = prune_model(
        adapter, copy.deepcopy(model), rand, width_scores=l1, allocation="cost", target_flops=0.5, imgsz=IMGSZ
    )
    assert mixed.channels_after == by_l1.channels_after  # the widths of l1's allocation
    assert abs(mixed.achieved["flops"] - 0.5) <= 0.01 and mixed.predicted == mixed.after
    # and within each group, the lowest-scored channels by the random scores
    coupled = enumerate_groups(model, adapter.example_inputs(model, IMGSZ), adapter.protected_layers(model))
    orders = removal_orders(coupled, group_scores(coupled, rand, mixed.settings["normalisation"]))
    by_root = {g.root: g for g in coupled.groups}
    for r in mixed.removed:
        g = by_root[r.root]
        assert r.channels == sorted(g.channels[orders[g.index][: len(r.channels)]].tolist())
    assert [r.channels for r in mixed.removed] != [r.channels for r in by_l1.removed]


BASE = ["prune", "--model", "yolov5n.yaml", "--random-init", "--imgsz", "96", "--target-flops", "0.5"]


def test_cli_records_the_allocation_and_takes_widths_from_another_criterion(tmp_path):
    first, second = tmp_path / "l1", tmp_path / "mixed"
    assert main(BASE + ["--criterion", "l1", "--allocation", "cost", "--out", str(first)]) == 0
    assert (
        main(BASE + ["--criterion", "random", "--allocation", "cost", "--widths-from", "l1", "--out", str(second)]) == 0
    )
    one, two = (json.loads((f / "prune.json").read_text()) for f in (first, second))
    assert one["allocation"] == {"allocation": "cost", "cost": "flops", "widths_from": None}
    assert two["allocation"] == {"allocation": "cost", "cost": "flops", "widths_from": "l1"}
    assert (second / "width_scores.pt").is_file()
    channels = [json.loads((f / "channels.json").read_text()) for f in (first, second)]
    assert channels[0] == channels[1] and one["removed"] != two["removed"]


def test_widths_from_a_data_criterion_scores_on_the_same_images(synthetic_kitti, tmp_path):
    """Widths from taylor on the run's images equal the widths of a taylor run on those images."""
    adapter = YoloAdapter()
    torch.manual_seed(0)
    weights = adapter.save(
        adapter.load("yolov5n.yaml", class_names=["Car", "Pedestrian", "Cyclist"]), tmp_path / "fixed.pt"
    )
    # one set of weights for both runs
    fixed = ["prune", "--model", str(weights), "--imgsz", "96", "--target-flops", "0.5"]
    data = [
        "--data",
        str(synthetic_kitti),
        "--max-images",
        "4",
        "--batch-size",
        "2",
        "--no-eval",
        "--allocation",
        "cost",
    ]
    taylor, mixed = tmp_path / "taylor", tmp_path / "mixed"
    assert main(fixed + data + ["--criterion", "taylor", "--out", str(taylor)]) == 0
    assert main(fixed + data + ["--criterion", "l1", "--widths-from", "taylor", "--out", str(mixed)]) == 0
    widths = [json.loads((f / "channels.json").read_text()) for f in (taylor, mixed)]
    first, second = (torch.load(f, weights_only=True) for f in (taylor / "scores.pt", mixed / "width_scores.pt"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert widths[0] == widths[1]
    # CATRO at taylor's widths chooses each group's subset jointly, and prune.json says so
    catro = tmp_path / "catro"
    assert main(fixed + data + ["--criterion", "catro", "--widths-from", "taylor", "--out", str(catro)]) == 0
    assert json.loads((catro / "channels.json").read_text()) == widths[0]
    assert json.loads((catro / "prune.json").read_text())["settings"]["subsets"] == "catro"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--allocation", "knapsack"], "--allocation must be one of global, uniform, cost"),
        (["--widths-from", "nonsense"], "--widths-from: unknown criterion 'nonsense'"),
        (["--allocation", "global", "--cost", "params"], "--cost is flops, params or latency, with --allocation cost"),
        (["--allocation", "cost", "--per-layer"], "--per-layer is --allocation uniform"),
    ],
)
def test_bad_allocation_input_is_one_line_and_writes_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(BASE + flags + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_an_unknown_allocation_in_the_api_is_one_line(v8n):
    from detprune.errors import DetpruneError

    adapter, model, scores = v8n
    with pytest.raises(DetpruneError, match="unknown allocation 'best'"):
        prune_model(adapter, copy.deepcopy(model), scores, allocation="best", target_flops=0.5, imgsz=IMGSZ)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--criterion", "taylor"], "cost"),  # measured best for Taylor (docs/benchmarks.md)
        (["--criterion", "saliency"], "cost"),  # +3.0 mAP50 [+0.8, +5.0] over global on 2,000 KITTI frames
        (["--criterion", "l1"], "global"),
        (["--criterion", "l1", "--widths-from", "taylor"], "cost"),  # the widths' criterion decides
        (["--criterion", "taylor", "--allocation", "uniform"], "uniform"),  # a named one is kept
        (["--criterion", "taylor", "--per-layer"], "uniform"),
    ],
)
def test_the_default_allocation_follows_the_criterion_that_allocates_the_widths(flags, expected):
    import argparse

    from detprune.commands import prune_options
    from detprune.workflow.config import allocation

    parser = argparse.ArgumentParser()
    prune_options.add_arguments(parser)
    args = parser.parse_args(["--model", "yolov8n.yaml", *flags])
    assert allocation(args) == expected
