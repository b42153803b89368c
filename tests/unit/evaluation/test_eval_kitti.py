"""KITTI AP|R40 of the exact-recall protocol (``protocol="exact"``) on scenes whose answer is known by construction."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from detprune.data.types import DetectionSet, Detections, Sample
from detprune.evaluation.kitti import box_iou
from detprune.evaluation.kitti import evaluate_kitti as evaluate_any
from detprune.evaluation.kitti_exact import average_precision_r11, average_precision_r40

evaluate_kitti = partial(evaluate_any, protocol="exact")

CLASSES = ["Car", "Pedestrian", "Cyclist"]
CAR, PED, CYC, DONTCARE = 0, 1, 2, -1
LEVELS = ("easy", "moderate", "hard")


def car_row(i: int, height: float = 60.0) -> list[float]:
    """A car box in a row of non-overlapping boxes."""
    x = 20.0 + 110.0 * i
    return [x, 100.0, x + 100.0, 100.0 + height]


def frame(boxes, labels, *, ignore=None, truncation=None, occlusion=None, name="000000") -> Sample:
    n = len(labels)
    return Sample(
        f"{name}.png", 1242, 375, np.array(boxes, np.float32).reshape(-1, 4), labels,
        ignore if ignore is not None else [lbl < 0 for lbl in labels],
        truncation if truncation is not None else [0.0] * n,
        occlusion if occlusion is not None else [0] * n,
    )


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, labels)


def ap(result, cls="Car") -> dict:
    return result["per_class"][cls]


def test_box_iou_matches_hand_value():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0]])


def test_r40_interpolates_at_forty_recall_points():
    assert average_precision_r40([1.0], [1.0]) == pytest.approx(1.0)
    assert average_precision_r40([0.5], [1.0]) == pytest.approx(20 / 40)
    # precision 1 up to recall 1/4, then 0.5 up to recall 1: 10 points at 1, 30 at 0.5
    assert average_precision_r40([0.25, 1.0], [1.0, 0.5]) == pytest.approx((10 + 30 * 0.5) / 40)
    assert average_precision_r40([], []) == 0.0


def test_r11_interpolates_at_eleven_recall_points():
    assert average_precision_r11([1.0], [1.0]) == pytest.approx(1.0)
    # recall 1/2 reaches the points 0, 0.1 .. 0.5: 6 of 11
    assert average_precision_r11([0.5], [1.0]) == pytest.approx(6 / 11)
    # precision 1 up to recall 1/4 (points 0, .1, .2), then 0.5 for .3 .. 1 (8 points)
    assert average_precision_r11([0.25, 1.0], [1.0, 0.5]) == pytest.approx((3 + 8 * 0.5) / 11)


def test_perfect_predictions_give_one_at_every_difficulty():
    samples = [
        frame([car_row(0), car_row(1), car_row(2, 80)], [CAR, PED, CYC], name="a"),
        frame([car_row(0, 45), car_row(3)], [CAR, CAR], name="b"),
    ]
    preds = [dets(s.boxes, np.linspace(0.9, 0.5, len(s.boxes)), s.labels) for s in samples]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), preds)
    for cls in CLASSES:
        assert ap(result, cls) == {level: pytest.approx(1.0) for level in LEVELS}
    assert result["mean"] == result["mean_R11"] == {level: pytest.approx(1.0) for level in LEVELS}
    assert result["num_objects"]["Car"] == {"easy": 3, "moderate": 3, "hard": 3}
    assert result["protocol"] == "exact" and "exact" in result["metric"]


def test_iou_between_half_and_seven_tenths_fails_car_but_passes_pedestrian():
    gt = [100.0, 100.0, 200.0, 200.0]
    shifted = [125.0, 100.0, 225.0, 200.0]  # IoU 7500 / 12500 = 0.6
    assert box_iou(np.array([gt]), np.array([shifted]))[0, 0] == pytest.approx(0.6)
    for cls, expected in [(CAR, 0.0), (PED, 1.0)]:
        data = DetectionSet(CLASSES, [frame([gt], [cls])])
        result = evaluate_kitti(data, [dets([shifted], [0.9], [cls])])
        assert ap(result, CLASSES[cls]) == {level: pytest.approx(expected) for level in LEVELS}
    # the threshold is configurable per class name
    data = DetectionSet(CLASSES, [frame([gt], [CAR])])
    relaxed = evaluate_kitti(data, [dets([shifted], [0.9], [CAR])], min_overlap={"Car": 0.5})
    assert ap(relaxed)["moderate"] == pytest.approx(1.0)
    assert relaxed["min_overlap"]["Car"] == 0.5


def test_detection_on_dontcare_is_not_a_false_positive_but_elsewhere_is():
    region = [700.0, 100.0, 900.0, 200.0]
    sample = frame([car_row(0), car_row(1), region], [CAR, CAR, DONTCARE])
    data = DetectionSet(CLASSES, [sample])
    found = [car_row(0), car_row(1)]
    on_region = [720.0, 110.0, 880.0, 190.0]  # fully inside the region
    elsewhere = [950.0, 110.0, 1110.0, 190.0]

    clean = evaluate_kitti(data, [dets(found, [0.9, 0.8], [CAR, CAR])])
    excused = evaluate_kitti(data, [dets(found + [on_region], [0.9, 0.8, 0.95], [CAR, CAR, CAR])])
    punished = evaluate_kitti(data, [dets(found + [elsewhere], [0.9, 0.8, 0.95], [CAR, CAR, CAR])])
    assert ap(excused) == ap(clean) == {level: pytest.approx(1.0) for level in LEVELS}
    # the top-scored false positive: precision 1/2 at recall 1/2, 2/3 at recall 1 -> 2/3 everywhere
    assert ap(punished) == {level: pytest.approx(2 / 3) for level in LEVELS}


def test_missed_objects_lower_ap_by_the_recall_lost():
    boxes = [car_row(i) for i in range(4)]
    data = DetectionSet(CLASSES, [frame(boxes, [CAR] * 4)])
    half = evaluate_kitti(data, [dets(boxes[:2], [0.9, 0.8], [CAR, CAR])])
    assert ap(half)["moderate"] == pytest.approx(20 / 40)
    # 3 cars, 1 found: recall 1/3 covers the points 1/40 .. 13/40
    data3 = DetectionSet(CLASSES, [frame(boxes[:3], [CAR] * 3)])
    third = evaluate_kitti(data3, [dets(boxes[:1], [0.9], [CAR])])
    assert ap(third)["moderate"] == pytest.approx(13 / 40)
    nothing = evaluate_kitti(data3, [dets(np.zeros((0, 4)), [], [])])
    assert ap(nothing)["moderate"] == 0.0


def test_precision_follows_score_order_across_images():
    # image a: 2 cars; image b: 1 car. Scores: TP .9 (a), FP .8 (b), TP .7 (a), TP .6 (b)
    a = frame([car_row(0), car_row(1)], [CAR, CAR], name="a")
    b = frame([car_row(0)], [CAR], name="b")
    preds = [
        dets([car_row(0), car_row(1)], [0.9, 0.7], [CAR, CAR]),
        dets([car_row(5), car_row(0)], [0.8, 0.6], [CAR, CAR]),
    ]
    result = evaluate_kitti(DetectionSet(CLASSES, [a, b]), preds)
    # operating points: (r 1/3, p 1), (r 2/3, p 2/3), (r 1, p 3/4) -> interpolated: 13 x 1, 27 x 3/4
    assert ap(result)["moderate"] == pytest.approx((13 * 1 + 27 * 0.75) / 40)


def test_short_occluded_car_counts_for_moderate_and_hard_only():
    tall = car_row(0, 60)
    short = car_row(1, 30)  # 30 px tall, occlusion 1
    sample = frame([tall, short], [CAR, CAR], occlusion=[0, 1])
    data = DetectionSet(CLASSES, [sample])
    assert evaluate_kitti(data, [dets([tall], [0.9], [CAR])])["num_objects"]["Car"] == {
        "easy": 1,
        "moderate": 2,
        "hard": 2,
    }

    only_tall = evaluate_kitti(data, [dets([tall], [0.9], [CAR])])
    assert ap(only_tall) == {"easy": pytest.approx(1.0), "moderate": pytest.approx(0.5), "hard": pytest.approx(0.5)}
    # finding the short car as well: not a false positive for easy (ignored there), found for the others
    both = evaluate_kitti(data, [dets([tall, short], [0.9, 0.95], [CAR, CAR])])
    assert ap(both) == {level: pytest.approx(1.0) for level in LEVELS}


def test_truncation_and_occlusion_limits():
    boxes = [car_row(0), car_row(1), car_row(2)]
    sample = frame(boxes, [CAR] * 3, truncation=[0.0, 0.2, 0.4], occlusion=[0, 0, 2])
    result = evaluate_kitti(DetectionSet(CLASSES, [sample]), [dets(boxes[:1], [0.9], [CAR])])
    assert result["num_objects"]["Car"] == {"easy": 1, "moderate": 2, "hard": 3}
    assert ap(result) == {
        "easy": pytest.approx(1.0),
        "moderate": pytest.approx(20 / 40),
        "hard": pytest.approx(13 / 40),
    }


def test_class_without_countable_objects_gives_none():
    sample = frame([car_row(0, 10)], [CAR])  # only a 10 px car: counts nowhere
    result = evaluate_kitti(DetectionSet(CLASSES, [sample]), [dets([], [], [])])
    assert ap(result) == {level: None for level in LEVELS}
    assert result["mean"] == {level: None for level in LEVELS}


def test_neighbouring_class_is_neither_found_nor_missed():
    car, van = car_row(0), car_row(1)
    sample = frame([car, van], [CAR, CAR], ignore=[False, True])  # Van kept as an ignore box labelled Car
    data = DetectionSet(CLASSES, [sample])
    missed_van = evaluate_kitti(data, [dets([car], [0.9], [CAR])])
    found_van = evaluate_kitti(data, [dets([car, van], [0.9, 0.95], [CAR, CAR])])
    assert ap(missed_van)["moderate"] == ap(found_van)["moderate"] == pytest.approx(1.0)
    assert missed_van["num_objects"]["Car"]["moderate"] == 1


def test_short_detections_are_ignored():
    sample = frame([car_row(0)], [CAR])
    tiny_fp = [900.0, 100.0, 950.0, 120.0]  # 20 px tall: below every difficulty's minimum
    result = evaluate_kitti(DetectionSet(CLASSES, [sample]), [dets([car_row(0), tiny_fp], [0.5, 0.99], [CAR, CAR])])
    assert ap(result) == {level: pytest.approx(1.0) for level in LEVELS}


def test_detection_of_another_class_does_not_count():
    sample = frame([car_row(0)], [CAR])
    result = evaluate_kitti(DetectionSet(CLASSES, [sample]), [dets([car_row(0)], [0.9], [PED])])
    assert ap(result, "Car")["moderate"] == 0.0
    assert ap(result, "Pedestrian")["moderate"] is None


def test_inputs_are_not_modified():
    sample = frame([car_row(0)], [CAR])
    pred = dets([car_row(0)], [0.9], [CAR])
    before = (sample.boxes.copy(), pred.boxes.copy(), pred.scores.copy())
    evaluate_kitti(DetectionSet(CLASSES, [sample]), [pred])
    for a, b in zip(before, (sample.boxes, pred.boxes, pred.scores)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_recount_matches_a_full_recount(seed):
    """Recounting only the images whose detections enter equals recounting every image at every threshold."""
    from detprune.evaluation import kitti_exact as k
    from detprune.evaluation.kitti import min_overlap_for

    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(16):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 1000, (n, 2))
        boxes = np.c_[xy, xy + rng.uniform(20, 120, (n, 2))]
        labels = rng.choice([-1, 0, 0, 1], n)
        samples.append(
            frame(
                boxes,
                labels,
                ignore=(labels < 0) | (rng.random(n) < 0.15),
                truncation=rng.choice([0.0, 0.2, 0.4], n),
                occlusion=rng.choice([0, 0, 1, 2], n),
                name=str(i),
            )
        )
        # a noisy copy of most objects (some of another class), plus strays
        m = int(rng.integers(0, n + 3)) if n else 0
        picked = rng.integers(0, max(n, 1), m)
        noisy = boxes[picked] + rng.normal(0, 3, (m, 4)) + (rng.random((m, 1)) < 0.2) * 150
        kind = np.where(rng.random(m) < 0.85, labels[picked], rng.integers(0, 2, m))
        preds.append(dets(noisy, rng.random(m), np.clip(kind, 0, 1)))
    result = evaluate_kitti(DetectionSet(CLASSES, samples), preds)

    for label, name in enumerate(CLASSES[:2]):
        frames = [k._Frame.build(s, p, label) for s, p in zip(samples, preds)]
        ov = min_overlap_for(name)
        for level in k.DIFFICULTIES:
            states = [f.states(level) for f in frames]
            if sum((g == k._COUNTED).sum() for g, _ in states) == 0:
                assert result["per_class"][name][level.name] is None
                continue
            scores = np.concatenate(
                [k._true_positive_scores(f, g, s, ov) for f, (g, s) in zip(frames, states)] + [np.zeros(0)]
            )
            recall, precision = [], []
            for t in np.unique(scores)[::-1]:
                tp, fp, fn = sum(k._count(f, g, s, f.det_scores >= t, ov) for f, (g, s) in zip(frames, states))
                recall.append(tp / (tp + fn) if tp + fn else 0.0)
                precision.append(tp / (tp + fp) if tp + fp else 0.0)
            assert result["per_class"][name][level.name] == pytest.approx(k.average_precision_r40(recall, precision))
