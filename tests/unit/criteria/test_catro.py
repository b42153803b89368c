"""CATRO (class-aware trace ratio): the solver, the scatter statistics, a toy detector with a known
answer, and a real YOLOv5n whose kept sets the pruner accepts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria import get_criterion
from detprune.criteria.catro import CATRO, BACKGROUND, ClassStatistics, marginal_gains, solve_trace_ratio
from detprune.data.types import Detections
from pruning_toys import one_thread  # noqa: F401
from saliency_toys import make_batch, random_image


def test_solver_climbs_past_the_largest_between_class_channel():
    # by b alone channel 0 wins (ratio 1); the trace ratio prefers channel 1 (ratio 6)
    solution = solve_trace_ratio(np.array([10.0, 3.0]), np.array([10.0, 0.5]), keep=1)
    assert solution.kept.tolist() == [1] and solution.ratio == pytest.approx(6.0)
    assert solution.history[0] == 0.0 and all(a <= b for a, b in zip(solution.history, solution.history[1:]))


@pytest.mark.parametrize("seed", range(5))
def test_solver_finds_the_best_subset_and_lambda_never_falls(seed):
    rng = np.random.default_rng(seed)
    b, w = rng.random(8) * rng.random(8) * 5, rng.random(8) + 0.05
    solution = solve_trace_ratio(b, w, keep=3)
    best = max(b[list(s)].sum() / w[list(s)].sum() for s in itertools.combinations(range(8), 3))
    assert solution.ratio == pytest.approx(best)
    assert b[solution.kept].sum() / w[solution.kept].sum() == pytest.approx(best)
    assert all(a <= b_ for a, b_ in zip(solution.history, solution.history[1:]))


@pytest.mark.parametrize("ridge", [0.5, 3.0])
def test_the_ridge_solution_is_the_best_subset_of_the_regularised_ratio(ridge):
    rng = np.random.default_rng(7)
    b, w = rng.random(8) * rng.random(8) * 5, rng.random(8) + 0.05
    solution = solve_trace_ratio(b, w, keep=3, ridge=ridge)
    charged = w + ridge * w.mean()
    best = max(b[list(s)].sum() / charged[list(s)].sum() for s in itertools.combinations(range(8), 3))
    assert solution.ratio == pytest.approx(best)


def test_the_ridge_leans_to_between_class_scatter_and_inf_keeps_the_largest():
    # channel 0: large between- and within-class scatter; channel 1: little of either, better ratio
    b, w = np.array([10.0, 3.0, 1.0]), np.array([10.0, 0.5, 5.0])
    assert solve_trace_ratio(b, w, keep=1).kept.tolist() == [1]  # the paper's ratio
    assert solve_trace_ratio(b, w, keep=1, ridge=10.0).kept.tolist() == [0]
    at_inf = solve_trace_ratio(b, w, keep=2, ridge=math.inf)
    assert at_inf.kept.tolist() == [0, 1] and at_inf.ratio == 0.0
    np.testing.assert_array_equal(marginal_gains(b, w, 0.0, math.inf), b)


def test_a_negative_ridge_is_refused_in_one_line():
    from detprune.errors import DetpruneError

    with pytest.raises(DetpruneError, match="ridge must be >= 0"):
        CATRO(ridge=-1)
    with pytest.raises(DetpruneError, match="ridge must be >= 0"):
        solve_trace_ratio(np.ones(2), np.ones(2), keep=1, ridge=-0.5)


def test_a_perfectly_separating_channel_has_infinite_ratio_and_is_kept():
    solution = solve_trace_ratio(np.array([0.0, 2.0, 1.0]), np.array([1.0, 0.0, 1.0]), keep=1)
    assert solution.kept.tolist() == [1] and solution.ratio == float("inf")


def test_class_statistics_match_the_scatter_computed_plainly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 2, 2))
    y = rng.integers(0, 3, 30)
    stats = ClassStatistics()
    for part in (slice(0, 11), slice(11, 30)):  # accumulated over two batches
        stats.add(torch.from_numpy(x[part]), torch.from_numpy(y[part]))
    b, w = stats.scatter()
    flat = x.reshape(30, 4, 4)
    mean = flat.mean(0)
    want_b = sum((y == j).sum() * ((flat[y == j].mean(0) - mean) ** 2).sum(-1) for j in range(3))
    want_w = sum(((flat[y == j] - flat[y == j].mean(0)) ** 2).sum((0, 2)) for j in range(3))
    np.testing.assert_allclose(b, want_b, rtol=1e-10)
    np.testing.assert_allclose(w, want_w, rtol=1e-10)


class ColourDetector(nn.Module):
    """A stride-2 'detector' whose first conv copies the image's colour planes: red, green, blue."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 2, stride=2, bias=False)
        self.stem.weight.data.zero_()
        for c in range(3):
            self.stem.weight.data[c, c] = 0.25  # 2x2 average of plane c
        self.head = nn.Conv2d(3, 2, 1)
        self.double()

    def forward(self, x):
        return self.head(self.stem(x))


class ColourAdapter(DetectorAdapter):
    family = "colour"

    @classmethod
    def handles(cls, spec) -> bool:
        return False

    def activation_points(self, model):
        return {"stem": model.stem}

    def predict(self, model, batch, **kw):
        model(batch.images.to(torch.float64))
        return [
            Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
            for _ in range(len(batch))
        ]

    def _unused(self, *args, **kwargs):
        raise NotImplementedError("not needed by CATRO")

    load = class_names = prepare_for_pruning = example_inputs = protected_layers = _unused
    detection_loss = detection_utility = finetune = save = load_checkpoint = _unused


def colour_batches(count: int = 6):
    """Red tells the class (class 0 boxes: 1.0, class 1: 0.0, background: 0.5); green is noise; blue is flat."""
    batches = []
    for i in range(count):
        image = torch.empty(3, 32, 32, dtype=torch.float64)
        image[0] = 0.5
        image[1] = torch.rand(32, 32, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        image[2] = 0.3
        boxes = [[2 + i, 2, 12 + i, 14], [18, 16 + i % 3, 30, 28 + i % 3]]
        for (x0, y0, x1, y1), red in zip(boxes, (1.0, 0.0)):
            image[0, y0:y1, x0:x1] = red
        batches.append(make_batch([image], [boxes], [[0, 1]]))
    return batches


def test_the_channel_that_separates_the_classes_is_kept_end_to_end():
    catro = CATRO(samples_per_class=6, progress=False)
    kept = catro.kept_sets(ColourAdapter(), ColourDetector(), colour_batches(), keep_fraction=1 / 3)
    assert kept == {"stem": [0]}
    counts = catro.last_stats.samples_per_class
    assert counts == {"background": 6, "0": 6, "1": 6} and catro.last_stats.forward_passes >= 3
    solution = catro.last_solutions["stem"]
    assert all(a <= b for a, b in zip(solution.history, solution.history[1:]))
    scores = catro.score(ColourAdapter(), ColourDetector(), colour_batches())["stem"]
    assert scores.dtype == torch.float64 and int(scores.argmax()) == 0


def test_reading_stops_once_every_class_is_full():
    catro = CATRO(samples_per_class=2, progress=False)
    catro.statistics(ColourAdapter(), ColourDetector(), colour_batches(6))
    assert catro.last_stats.batches == 2 < 6  # background comes 2 per image; objects 1 per class per image


def test_boxes_of_a_single_class_without_background_are_a_clear_error():
    from detprune.errors import DetpruneError

    batch = make_batch([random_image(0).double()], [[[2, 2, 12, 12]]], [[0]])
    with pytest.raises(DetpruneError, match="at least two classes"):
        CATRO(background=False, progress=False).score(ColourAdapter(), ColourDetector(), [batch])


def test_registered():
    assert isinstance(get_criterion("catro", samples_per_class=4), CATRO)
    assert BACKGROUND < 0


def test_catro_on_yolov5n_gives_kept_sets_the_pruner_accepts():
    yolo = pytest.importorskip("detprune.adapters.yolo")
    from detprune.pruning import prune_model

    adapter = yolo.YoloAdapter()
    torch.manual_seed(0)
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml", class_names=["car", "pedestrian"])).eval()
    images = [random_image(i, 64).float() for i in range(2)]
    batches = [make_batch(images, [[[4, 8, 40, 44], [44, 30, 52, 46]], [[10, 2, 62, 60]]], [[0, 1], [0]])]
    catro = CATRO(samples_per_class=4, progress=False)
    kept = catro.kept_sets(adapter, model, batches, keep_fraction=0.5)
    points = adapter.activation_points(model)
    assert set(kept) == set(points)
    for name, channels in kept.items():
        assert len(channels) == max(1, round(0.5 * model.get_submodule(name).out_channels)), name
    result = prune_model(adapter, model, kept=kept, imgsz=64)
    assert result.after.params < result.before.params


def _group_ratio(catro, coupled, group, removed) -> float:
    """CATRO's objective for what ``group`` keeps (the regularised trace ratio; at ``ridge = inf``
    the between-class scatter kept), from its statistics summed over the group's layers."""
    b, w = catro.group_scatter(group)
    prunable = np.asarray(group.prunable)
    kept = np.setdiff1d(prunable, removed)
    if math.isinf(catro.ridge):
        return float(b[kept].sum())
    return float(b[kept].sum() / (w[kept].sum() + catro.ridge * w[prunable].mean() * len(kept)))


@pytest.mark.parametrize("ridge", [0.0, 2.0, math.inf])
def test_catro_subsets_at_uniform_widths_hit_the_target_are_exact_and_separate_best(ridge):
    """Under the uniform allocation CATRO picks each group's channels jointly (the trace-ratio
    subset at that width): the FLOPs target is met, zeroing exactly those channels and cutting
    them gives the same outputs, and every group keeps an objective at least the ranking's."""
    import copy

    yolo = pytest.importorskip("detprune.adapters.yolo")
    from detprune.pruning import prune_model
    from detprune.pruning.groups import enumerate_groups
    from detprune.pruning.pruner import trace_forward
    from pruning_toys import assert_same_outputs, randomise_norms
    from pruning_toys import cut_exactly_what_cost_removes

    adapter = yolo.YoloAdapter()
    torch.manual_seed(0)
    model = adapter.prepare_for_pruning(adapter.load("yolov5n.yaml", class_names=["car", "pedestrian"])).eval()
    randomise_norms(model, 3)
    images = [random_image(i, 64).float() for i in range(2)]
    batches = [make_batch(images, [[[4, 8, 40, 44], [44, 30, 52, 46]], [[10, 2, 62, 60]]], [[0, 1], [0]])]
    catro = CATRO(samples_per_class=4, ridge=ridge, progress=False)
    scores = catro.score(adapter, model, batches)

    joint = prune_model(
        adapter, copy.deepcopy(model), scores, allocation="uniform", subsets=catro, target_flops=0.5, imgsz=64
    )
    ranked = prune_model(adapter, copy.deepcopy(model), scores, allocation="uniform", target_flops=0.5, imgsz=64)
    assert abs(joint.achieved["flops"] - 0.5) <= 0.02 * 0.5 and joint.settings["subsets"] == "catro"
    assert joint.channels_after == ranked.channels_after  # the same widths, other channels

    coupled = enumerate_groups(model, adapter.example_inputs(model, 64), adapter.protected_layers(model),
                               trace_forward(adapter, model))
    by_root = {g.root: g for g in coupled.groups}
    differ = 0
    for a, b in zip(sorted(joint.removed, key=lambda r: r.group), sorted(ranked.removed, key=lambda r: r.group)):
        group = by_root[a.root]
        position = {int(c): p for p, c in enumerate(group.channels.tolist())}
        mine = [position[c] for c in a.channels]
        theirs = [position[c] for c in b.channels]
        assert _group_ratio(catro, coupled, group, mine) >= _group_ratio(catro, coupled, group, theirs) * (1 - 1e-12)
        differ += sorted(mine) != sorted(theirs)
    assert differ or math.isinf(ridge)  # the joint choice is not the ranking in disguise (at inf it is: b alone)

    before, after = cut_exactly_what_cost_removes(adapter, model, scores, 64, lambda m, x, ref=None: m(x),
                                                   allocation="uniform", subsets=catro)
    assert_same_outputs(before, after)
