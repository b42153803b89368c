"""Targets, limits, rounding, determinism and the analytic cost model, on YOLOv8n and toy nets."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from detprune.adapters.yolo import YoloAdapter
from detprune.criteria import get_criterion
from detprune.errors import DetpruneError
from detprune.pruning import apply_removals, prune_model
from detprune.pruning.targets import make_target

from pruning_toys import ResidualConcatNet, ToyAdapter, one_thread  # noqa: F401

IMGSZ = 128


@pytest.fixture(scope="module")
def yolo():
    adapter = YoloAdapter()
    torch.manual_seed(0)
    model = adapter.prepare_for_pruning(adapter.load("yolov8n.yaml"))
    return adapter, model, get_criterion("l1").score(adapter, model, [])


def _fresh(yolo):
    adapter, model, scores = yolo
    return adapter, copy.deepcopy(model), scores


def _pruned_widths(result):
    return {
        n: (b, result.channels_after[n]) for n, b in result.channels_before.items() if result.channels_after[n] != b
    }


@pytest.mark.parametrize(
    "target, global_ranking",
    [({"target_flops": 0.5}, True), ({"target_params": 0.6}, False), ({"ratio": 0.3}, True)],
)
def test_targets_are_met_within_two_percent_and_predicted_exactly(yolo, target, global_ranking):
    adapter, model, scores = _fresh(yolo)
    result = prune_model(adapter, model, scores, global_ranking=global_ranking, imgsz=IMGSZ, **target)
    kind, value = next(iter(target.items()))
    achieved = result.achieved[{"target_flops": "flops", "target_params": "params", "ratio": "ratio"}[kind]]
    assert abs(achieved - value) <= 0.02 * value
    assert result.predicted == result.after  # the analytic cost model is exact
    assert result.after.macs < result.before.macs and result.after.params < result.before.params
    widths = _pruned_widths(result)
    assert widths and all(after % 8 == 0 for _, after in widths.values())  # default round_to=8


def test_rounding_floor_and_max_ratio_hold_on_every_pruned_layer(yolo):
    adapter, model, scores = _fresh(yolo)
    result = prune_model(
        adapter, model, scores, target_flops=0.5, round_to=16, min_channels=32, max_ratio=0.6, imgsz=IMGSZ
    )
    widths = _pruned_widths(result)
    assert widths
    for name, (before, after) in widths.items():
        assert after % 16 == 0 and after >= 32 and after >= math.ceil(before * 0.4), name


def test_unreachable_target_names_the_closest_reachable_value(yolo):
    adapter, model, scores = _fresh(yolo)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(DetpruneError) as info:
        prune_model(adapter, model, scores, target_flops=0.02, imgsz=IMGSZ)
    message = str(info.value)
    assert "\n" not in message and "cannot be reached" in message and "closest reachable target_flops=0." in message
    closest = float(message.rsplit("target_flops=", 1)[1])
    assert 0.02 < closest < 0.5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # nothing was cut
    # the value it names can be reached
    result = prune_model(adapter, model, scores, target_flops=closest, imgsz=IMGSZ)
    assert abs(result.achieved["flops"] - closest) <= 0.02 * closest


def test_same_scores_give_the_same_cut_and_a_recorded_cut_replays(yolo):
    adapter, first, scores = _fresh(yolo)
    _, second, _ = _fresh(yolo)
    _, fresh, _ = _fresh(yolo)
    a = prune_model(adapter, first, scores, target_flops=0.6, imgsz=IMGSZ)
    b = prune_model(adapter, second, scores, target_flops=0.6, imgsz=IMGSZ)
    assert [r.as_dict() for r in a.removed] == [r.as_dict() for r in b.removed]
    apply_removals(adapter, fresh, [r.as_dict() for r in a.removed], imgsz=IMGSZ)
    for state in (second.state_dict(), fresh.state_dict()):
        assert all(torch.equal(v, state[k]) for k, v in first.state_dict().items())


def test_kept_sets_are_honoured_and_rounded_up():
    adapter = ToyAdapter(("head",))
    model = ResidualConcatNet()
    kept = {"left.0": [0, 2, 4, 6, 8, 10, 12], "fuse.0": list(range(16))}
    result = prune_model(adapter, model, kept=kept, round_to=8, min_channels=8)
    assert result.channels_after["left.0"] == 8  # 7 chosen, rounded up to 8
    assert result.channels_after["fuse.0"] == 16
    removed = {name: ch for r in result.removed for name, ch in r.layers.items()}
    assert not set(kept["left.0"]) & set(removed["left.0"]) and removed["fuse.0"] == list(range(16, 48))
    assert result.channels_after["stem.0"] == 32  # no kept set given: whole


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ratio": 1.5}, "ratio must lie in"),
        ({"ratio": -0.1}, "ratio must lie in"),
        ({"target_flops": 0.0}, "target_flops must lie in"),
        ({"target_params": 2}, "target_params must lie in"),
        ({"ratio": 0.3, "target_flops": 0.5}, "give one target"),
        ({}, "give a target"),
        ({"ratio": 0.3, "round_to": 0}, "round_to"),
        ({"ratio": 0.3, "max_ratio": 1.0}, "max_ratio"),
        ({"ratio": 0.3, "min_channels": 0}, "min_channels"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    adapter, model = ToyAdapter(("head",)), ResidualConcatNet()
    scores = {n: torch.rand(m.out_channels) for n, m in adapter.activation_points(model).items()}
    with pytest.raises(DetpruneError, match=message) as info:
        prune_model(adapter, model, scores, **options)
    assert "\n" not in str(info.value)


def test_strict_targets_refuse_the_no_op_ends():
    with pytest.raises(DetpruneError):
        make_target(ratio=0.0, strict=True)
    with pytest.raises(DetpruneError):
        make_target(target_flops=1.0, strict=True)
    assert make_target(ratio=0.0).value == 0.0 and make_target(target_flops=1.0).value == 1.0


def test_a_target_between_two_coarse_steps_is_refused_with_the_nearest():
    """The toy net's few groups at round_to=16 give few distinct cuts: 7% lies between two."""
    adapter, model = ToyAdapter(("head",)), ResidualConcatNet()
    scores = {
        n: torch.rand(m.out_channels, generator=torch.Generator().manual_seed(0))
        for n, m in adapter.activation_points(model).items()
    }
    with pytest.raises(DetpruneError, match="falls between two reachable steps") as info:
        prune_model(adapter, copy.deepcopy(model), scores, ratio=0.07, round_to=16, min_channels=8)
    message = str(info.value)
    assert "\n" not in message
    nearest = float(message.rsplit("closest reachable ratio=", 1)[1].split()[0])
    result = prune_model(adapter, model, scores, ratio=nearest, round_to=16, min_channels=8)
    assert abs(result.achieved["ratio"] - nearest) <= 0.02 * nearest
