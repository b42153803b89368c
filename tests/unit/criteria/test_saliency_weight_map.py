"""The spatial weight map of box-weighted saliency: area overlap, unit mass, context, ignore."""

from __future__ import annotations

import pytest
import torch

from detprune.criteria.weight_map import WeightMapSpec, batch_weight_maps, box_coverage, grow_boxes, image_weight_map
from detprune.errors import DetpruneError


def boxes(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def flags(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool).reshape(-1)


CORE_ONLY = WeightMapSpec(context=0.0, normalize_boxes=False)


def test_a_box_smaller_than_a_cell_gets_its_area_share():
    # 64 px input, 2x2 map: 32 px cells; a 4x4 px box straddling the vertical cell edge at x=32
    weights = image_weight_map(boxes([30, 4, 34, 8]), flags(False), (64, 64), (2, 2), CORE_ONLY)
    expected = torch.tensor([[8 / 1024, 8 / 1024], [0, 0]], dtype=torch.float64)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    normalised = image_weight_map(boxes([30, 4, 34, 8]), flags(False), (64, 64), (2, 2), WeightMapSpec(context=0.0))
    torch.testing.assert_close(normalised, torch.tensor([[0.5, 0.5], [0, 0]], dtype=torch.float64))


def test_unit_mass_makes_a_pedestrian_count_as_much_as_a_truck():
    small, large = [10, 10, 30, 30], [100, 40, 400, 240]  # 20x20 px and 300x200 px
    both = boxes(small, large)
    for spec in (WeightMapSpec(), WeightMapSpec(context=0.0), WeightMapSpec(context_scale=2.0, context=0.3)):
        weights = image_weight_map(both, flags(False, False), (320, 480), (40, 60), spec)
        alone = [image_weight_map(boxes(b), flags(False), (320, 480), (40, 60), spec) for b in (small, large)]
        assert alone[0].sum().item() == pytest.approx(1.0) and alone[1].sum().item() == pytest.approx(1.0)
        torch.testing.assert_close(weights, alone[0] + alone[1])  # disjoint: the sum keeps each mass
    raw = [
        image_weight_map(boxes(b), flags(False), (320, 480), (40, 60), CORE_ONLY).sum().item() for b in (small, large)
    ]
    assert raw[0] == pytest.approx(400 / 64) and raw[1] == pytest.approx(60000 / 64)  # area in 8x8 px cells


def test_unit_mass_holds_at_every_resolution():
    box = boxes([13.3, 7.1, 29.9, 50.2])
    for size in ((40, 40), (20, 20), (10, 10), (5, 5), (3, 3)):
        assert image_weight_map(box, flags(False), (320, 320), size).sum().item() == pytest.approx(1.0)


def test_context_ring_and_background_weights():
    spec = WeightMapSpec(context=0.5, context_scale=2.0, background=0.25, normalize_boxes=False)
    # 16x16 input, 1 px cells; box 6..10 grows to 4..12
    weights = image_weight_map(boxes([6, 6, 10, 10]), flags(False), (16, 16), (16, 16), spec)
    assert weights[8, 8] == 1.0 and weights[6, 6] == 1.0
    assert weights[4, 4] == 0.5 and weights[11, 8] == 0.5
    assert weights[0, 0] == 0.25 and weights[12, 12] == 0.25
    assert torch.equal(grow_boxes(boxes([6, 6, 10, 10]), 2.0), boxes([4, 4, 12, 12]))


def test_normalised_background_has_its_own_mass():
    spec = WeightMapSpec(context=0.0, context_scale=1.0, background=0.2)
    weights = image_weight_map(boxes([0, 0, 8, 8]), flags(False), (32, 32), (4, 4), spec)
    assert weights.sum().item() == pytest.approx(1.2)
    assert weights[0, 0].item() == pytest.approx(1.0) and weights[3, 3].item() == pytest.approx(0.2 / 15)


def test_ignore_regions_get_weight_zero_and_override_objects():
    spec = WeightMapSpec(context=0.5, background=0.3, normalize_boxes=False)
    weights = image_weight_map(
        boxes([0, 0, 16, 16], [8, 0, 16, 16], [4, 4, 6, 6]), flags(False, True, True), (16, 16), (8, 8), spec
    )
    assert (weights[:, 4:] == 0).all()  # cells fully inside the ignore region, object or not
    assert weights[0, 0] == 1.0
    assert weights[2, 2] == 0.0 and weights[2, 1] == 1.0  # the small region covers cell (2, 2) exactly


def test_partially_ignored_cell_keeps_the_uncovered_share():
    weights = image_weight_map(boxes([0, 0, 4, 4], [0, 0, 1, 4]), flags(False, True), (4, 4), (1, 1), CORE_ONLY)
    assert weights.item() == pytest.approx(0.75)


def test_overlap_sum_keeps_each_mass_max_does_not():
    pair = boxes([0, 0, 16, 16], [4, 4, 8, 8])  # a small box in front of a large one
    sum_map = image_weight_map(pair, flags(False, False), (16, 16), (16, 16), WeightMapSpec(context=0.0))
    max_map = image_weight_map(pair, flags(False, False), (16, 16), (16, 16), WeightMapSpec(context=0.0, overlap="max"))
    assert sum_map.sum().item() == pytest.approx(2.0)
    assert max_map.sum().item() < 2.0 - 1e-3
    raw_max = image_weight_map(
        pair, flags(False, False), (16, 16), (16, 16), WeightMapSpec(context=0.0, normalize_boxes=False, overlap="max")
    )
    assert raw_max.max() == 1.0


def test_boxes_outside_the_input_count_only_inside():
    coverage = box_coverage(boxes([-8, -8, 8, 8]), (32, 32), (2, 2))
    torch.testing.assert_close(coverage[0], torch.tensor([[0.25, 0], [0, 0]], dtype=torch.float64))


def test_non_square_maps_and_batches():
    maps = batch_weight_maps([boxes([0, 0, 10, 5]), boxes()], [flags(False), flags()], (20, 40), (4, 8), CORE_ONLY)
    assert maps.shape == (2, 4, 8) and maps.dtype == torch.float64
    assert maps[0].sum().item() == pytest.approx(50 / 25) and maps[1].sum() == 0


@pytest.mark.parametrize(
    "field, value", [("context", -0.1), ("background", float("nan")), ("context_scale", 0.9), ("overlap", "mean")]
)
def test_bad_options_are_clear_errors(field, value):
    with pytest.raises(DetpruneError, match=field):
        WeightMapSpec(**{field: value})


@pytest.mark.parametrize("spec", [WeightMapSpec(), WeightMapSpec(background=0.3, overlap="max"),
                                  WeightMapSpec(normalize_boxes=False, background=0.1, context=0.2)])
def test_a_batch_is_drawn_as_its_images_one_by_one(spec):
    images = [(boxes([1, 2, 9, 30], [20, 20, 31, 28]), flags(False, False)), (boxes(), flags()),
              (boxes([0, 0, 32, 32], [4, 4, 12, 12], [14, 3, 15, 5]), flags(False, True, False))]
    together = batch_weight_maps([b for b, _ in images], [f for _, f in images], (32, 32), (5, 7), spec)
    for i, (b, f) in enumerate(images):
        torch.testing.assert_close(together[i], image_weight_map(b, f, (32, 32), (5, 7), spec), rtol=1e-12, atol=0)
    assert together[1].sum() == pytest.approx(spec.background if spec.normalize_boxes else spec.background * 35)
