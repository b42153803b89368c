"""KITTI AP of the devkit protocol (the default) on scenes whose answer follows from the devkit's rules.

The rules used in the derivations (see detprune/evaluation/kitti_devkit.py):
thresholds: the true-positive scores, best first, at most one per recall step of 1/40; with
N <= 40 counted objects every true positive is kept (each adds 1/N >= 1/40 of recall);
precision has 41 slots, unused ones 0, made non-increasing from the right;
AP_R40 = sum of slots 1..40 / 40, AP_R11 = sum of slots 0, 4, .., 40 / 11.
So perfect predictions on N <= 40 objects fill slots 0..N-1 with 1:
AP_R40 = (N - 1) / 40 and AP_R11 = (number of multiples of 4 below N) / 11.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detprune.data.kitti import read_kitti, read_kitti_results
from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import DetpruneError
from detprune.evaluation.kitti import evaluate_kitti
from detprune.evaluation.kitti_devkit import sample_thresholds
from detprune.evaluation.protocol import evaluate_detections

CLASSES = ["Car", "Pedestrian", "Cyclist"]
CAR, PED, CYC, DONTCARE = 0, 1, 2, -1
LEVELS = ("easy", "moderate", "hard")


def row(i: int, height: float = 60.0, top: float = 100.0, width: float = 40.0) -> list[float]:
    """A box in a row of non-overlapping boxes."""
    x = 10.0 + (width + 10.0) * i
    return [x, top, x + width, top + height]


def frame(boxes, labels, *, ignore=None, name="000000") -> Sample:
    n = len(labels)
    return Sample(
        f"{name}.png", 1242, 375, np.array(boxes, float).reshape(-1, 4), labels,
        ignore if ignore is not None else [lbl < 0 for lbl in labels], [0.0] * n, [0] * n,
    )


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, float).reshape(-1, 4), scores, labels)


def perfect(samples) -> list[Detections]:
    """Every box that is an object found exactly, with distinct scores."""
    out, score = [], 0.99
    for s in samples:
        keep = (s.labels >= 0) & ~s.ignore
        out.append(dets(s.boxes[keep], score - 0.001 * np.arange(keep.sum()), s.labels[keep]))
        score -= 0.001 * keep.sum()
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 23, 40])
def test_perfect_predictions_on_few_objects_give_n_minus_one_fortieths(n):
    samples = [frame([row(0)], [PED], name=f"{i:06d}") for i in range(n)]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples))
    assert result["protocol"] == "devkit" and "devkit" in result["metric"]
    # slots 0..n-1 hold precision 1: R40 counts slots 1..n-1; R11 the slots 0, 4, .. below n
    assert result["per_class"]["Pedestrian"] == {lv: pytest.approx((n - 1) / 40) for lv in LEVELS}
    assert result["per_class_R11"]["Pedestrian"] == {lv: pytest.approx(len(range(0, n, 4)) / 11) for lv in LEVELS}
    assert result["mean"]["easy"] == pytest.approx((n - 1) / 40)  # the only class with objects
    assert result["mean_R11"]["easy"] == pytest.approx(len(range(0, n, 4)) / 11)


def test_the_brief_example_23_pedestrians_give_55_points():
    # (23 - 1) / 40 = 0.55; R11: slots 0, 4, 8, 12, 16, 20 -> 6 / 11
    samples = [frame([row(i) for i in range(23)], [PED] * 23)]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples))
    assert 100 * result["per_class"]["Pedestrian"]["easy"] == pytest.approx(55.0)
    assert result["per_class_R11"]["Pedestrian"]["easy"] == pytest.approx(6 / 11)
    # the exact-recall protocol reports the interpolated curve instead: perfect is 1
    assert (
        evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples), protocol="exact")["per_class"]["Pedestrian"][
            "easy"
        ]
        == 1.0
    )


def test_perfect_predictions_on_many_objects_give_one():
    # 50 objects: a threshold at (about) every recall step k/40, the last (recall 1) always kept,
    # so all 41 slots hold precision 1
    assert len(sample_thresholds(np.linspace(0.9, 0.1, 50), 50)) == 41
    samples = [frame([row(i) for i in range(10)], [CAR] * 10, name=f"{j:06d}") for j in range(5)]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples))
    assert result["per_class"]["Car"] == result["per_class_R11"]["Car"] == {lv: pytest.approx(1.0) for lv in LEVELS}


def test_class_with_one_object():
    # one counted object, found: one threshold, slot 0 = 1 -> R40 0, R11 1/11
    samples = [frame([row(0)], [CYC])]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples))
    assert result["per_class"]["Cyclist"] == {lv: 0.0 for lv in LEVELS}
    assert result["per_class_R11"]["Cyclist"] == {lv: pytest.approx(1 / 11) for lv in LEVELS}
    assert result["per_class"]["Car"] == {lv: None for lv in LEVELS}
    assert result["num_objects"]["Cyclist"] == {lv: 1 for lv in LEVELS}


def test_ground_truth_at_exactly_the_minimum_height_is_ignored():
    # 5 pedestrians 30 px tall and one exactly 25 px: at moderate/hard the devkit ignores
    # height <= 25, so N = 5 -> 4/40 (its detection, 25 px, is not short: assigned, no FP);
    # at easy (40 px) none counts
    boxes = [row(i, 30.0) for i in range(5)] + [row(5, 25.0)]
    samples = [frame(boxes, [PED] * 6)]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples))
    assert result["num_objects"]["Pedestrian"] == {"easy": 0, "moderate": 5, "hard": 5}
    assert result["per_class"]["Pedestrian"] == {
        "easy": None,
        "moderate": pytest.approx(4 / 40),
        "hard": pytest.approx(4 / 40),
    }
    # the exact protocol keeps its own rule (height < 25 ignored): 6 objects
    exact = evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples), protocol="exact")
    assert exact["num_objects"]["Pedestrian"]["moderate"] == 6


def write_frame(root, labels: list[str], results: list[str]):
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    (root / "results").mkdir()
    cv2.imwrite(str(root / "image_2" / "000000.png"), np.full((375, 1242, 3), 90, np.uint8))
    (root / "label_2" / "000000.txt").write_text("".join(f"{t}\n" for t in labels))
    (root / "results" / "000000.txt").write_text("".join(f"{t}\n" for t in results))


def kitti_line(cls: str, x1, y1, x2, y2, score: str = "") -> str:
    return (f"{cls} 0.00 0 -10.00 {x1:.2f} {y1} {x2:.2f} {y2} "
            f"-1.00 -1.00 -1.00 -1000.00 -1000.00 -1000.00 -10.00 {score}").rstrip()


def test_boxes_of_exactly_25_px_from_text(tmp_path):
    # 103.57 -> 128.57 is 25.0 px in float64 but 25.0000076 px in float32 (which would count it);
    # 103.15 -> 128.15 is 25.0 in float64 but 24.9999924 in float32 (which would make it short)
    tall = [kitti_line("Pedestrian", 10 + 50 * i, "100.00", 50 + 50 * i, "130.00") for i in range(4)]
    gt_25 = kitti_line("Pedestrian", 300, "103.57", 340, "128.57")
    found = [
        kitti_line("Pedestrian", 10 + 50 * i, "100.00", 50 + 50 * i, "130.00", f"{0.9 - 0.1 * i:.4f}") for i in range(4)
    ]
    stray_25 = kitti_line("Pedestrian", 600, "103.15", 640, "128.15", "0.9500")
    write_frame(tmp_path, tall + [gt_25], found + [stray_25])
    data = read_kitti(tmp_path, progress=False)
    sample = data[0]
    assert sample.boxes.dtype == np.float64 and sample.boxes[4, 1] == float("103.57") and sample.box_heights[4] == 25.0
    preds = read_kitti_results(tmp_path / "results", data.class_names)
    assert preds["000000"].boxes[4, 3] - preds["000000"].boxes[4, 1] == 25.0
    result = evaluate_kitti(data, [preds["000000"]])
    # moderate: the 25 px ground truth is ignored (N = 4); the 25 px stray is not short, so it is a
    # false positive above every threshold: precision 1/2, 2/3, 3/4, 4/5 at the 4 thresholds,
    # 4/5 in slots 0..3 after the running max -> R40 3 x 0.8 / 40 = 0.06, R11 0.8 / 11
    assert result["num_objects"]["Pedestrian"]["moderate"] == 4
    assert result["per_class"]["Pedestrian"]["moderate"] == pytest.approx(3 * 0.8 / 40)
    assert result["per_class_R11"]["Pedestrian"]["moderate"] == pytest.approx(0.8 / 11)


def test_short_detection_of_another_class_absorbs_a_ground_truth():
    # 10 pedestrians 30 px tall (moderate). Nine are found (scores .9 .. .82). The tenth, B, has
    # its own detection at .5 and a Cyclist detection 24 px tall (< 25: short, ignored) at .99
    # with IoU 24/30 = 0.8. First pass: B takes the best-scored candidate, the short Cyclist box,
    # which makes B neither TP nor FN; so 9 true-positive scores, all kept: slots 0..8 = 1
    # (B's own detection at .5 is below every threshold) -> R40 8/40, R11 slots 0, 4, 8 -> 3/11.
    peds = [row(i, 30.0) for i in range(10)]
    b = peds[9]
    short_cyclist = [b[0], b[1] + 3.0, b[2], b[1] + 27.0]
    scores = [0.9 - 0.01 * i for i in range(9)]
    samples = [frame(peds, [PED] * 10)]
    preds = [dets(peds[:9] + [b, short_cyclist], scores + [0.5, 0.99], [PED] * 10 + [CYC])]
    result = evaluate_kitti(DetectionSet(CLASSES, samples), preds)
    assert result["num_objects"]["Pedestrian"]["moderate"] == 10
    assert result["per_class"]["Pedestrian"]["moderate"] == pytest.approx(8 / 40)
    assert result["per_class_R11"]["Pedestrian"]["moderate"] == pytest.approx(3 / 11)
    # a Cyclist box tall enough (28 px) takes no part: B is found at .5 -> 10 TPs -> 9/40
    tall_cyclist = [b[0], b[1] + 1.0, b[2], b[1] + 29.0]
    preds = [dets(peds[:9] + [b, tall_cyclist], scores + [0.5, 0.99], [PED] * 10 + [CYC])]
    assert evaluate_kitti(DetectionSet(CLASSES, samples), preds)["per_class"]["Pedestrian"][
        "moderate"
    ] == pytest.approx(9 / 40)
    # the exact protocol drops other classes' detections: B found there too (recall 1, precision 1)
    preds = [dets(peds[:9] + [b, short_cyclist], scores + [0.5, 0.99], [PED] * 10 + [CYC])]
    exact = evaluate_kitti(DetectionSet(CLASSES, samples), preds, protocol="exact")
    assert exact["per_class"]["Pedestrian"]["moderate"] == pytest.approx(1.0)


def three_cars_and(extra_box, extra_label, extra_ignore, det_box):
    """3 cars (60 px, counted everywhere) found at .9 .8 .7, an extra box, and a car detection at .95 on ``det_box``."""
    cars = [row(i) for i in range(3)]
    samples = [frame(cars + [extra_box], [CAR, CAR, CAR, extra_label], ignore=[False, False, False, extra_ignore])]
    preds = [dets(cars + [det_box], [0.9, 0.8, 0.7, 0.95], [CAR] * 4)]
    return evaluate_kitti(DetectionSet(CLASSES, samples), preds)


def test_dontcare_region_swallows_a_false_positive():
    region = [700.0, 100.0, 900.0, 200.0]
    inside = [720.0, 110.0, 880.0, 190.0]  # covered fully (> 0.7 of its area)
    elsewhere = [950.0, 110.0, 1110.0, 190.0]
    # swallowed: thresholds .9 .8 .7 with precision 1 each: slots 0..2 -> R40 2/40, R11 1/11
    swallowed = three_cars_and(region, DONTCARE, True, inside)
    assert swallowed["per_class"]["Car"] == {lv: pytest.approx(2 / 40) for lv in LEVELS}
    assert swallowed["per_class_R11"]["Car"] == {lv: pytest.approx(1 / 11) for lv in LEVELS}
    # not covered: the .95 box is an FP at every threshold: 1/2, 2/3, 3/4 -> running max 3/4 in
    # slots 0..2 -> R40 2 x 0.75 / 40, R11 0.75 / 11
    counted = three_cars_and(region, DONTCARE, True, elsewhere)
    assert counted["per_class"]["Car"] == {lv: pytest.approx(2 * 0.75 / 40) for lv in LEVELS}
    assert counted["per_class_R11"]["Car"] == {lv: pytest.approx(0.75 / 11) for lv in LEVELS}
    assert swallowed["num_objects"]["Car"] == {lv: 3 for lv in LEVELS}


def test_neighbour_class_box_is_neither_found_nor_missed():
    van = row(5)
    # a Car detection on the Van (an ignore box with the Car label, devkit valid class 0): it is
    # assigned to the Van and is no FP -> like the swallowed case, R40 2/40, R11 1/11
    found_van = three_cars_and(van, CAR, True, van)
    assert found_van["per_class"]["Car"] == {lv: pytest.approx(2 / 40) for lv in LEVELS}
    assert found_van["per_class_R11"]["Car"] == {lv: pytest.approx(1 / 11) for lv in LEVELS}
    assert found_van["num_objects"]["Car"] == {lv: 3 for lv in LEVELS}
    # the same box as a plain Car would be a fourth object: 4 TPs, perfect -> 3/40
    as_car = three_cars_and(van, CAR, False, van)
    assert as_car["per_class"]["Car"] == {lv: pytest.approx(3 / 40) for lv in LEVELS}


def test_short_detection_of_the_class_is_no_false_positive():
    # a 20 px Car detection on nothing, at .99: short at every level, ignored -> still 2/40
    assert three_cars_and(row(5), CAR, True, [900.0, 100.0, 950.0, 120.0])["per_class"]["Car"] == {
        lv: pytest.approx(2 / 40) for lv in LEVELS
    }


def test_unknown_protocol_is_a_one_line_error():
    samples = [frame([row(0)], [CAR])]
    for call in (
        lambda: evaluate_kitti(DetectionSet(CLASSES, samples), perfect(samples), protocol="official"),
        lambda: evaluate_detections(DetectionSet(CLASSES, samples), perfect(samples), kitti_protocol="official"),
    ):
        with pytest.raises(DetpruneError, match="unknown KITTI protocol 'official'") as info:
            call()
        assert "\n" not in str(info.value)


def test_evaluate_detections_passes_the_protocol_through():
    samples = [frame([row(i) for i in range(5)], [PED] * 5)]
    default = evaluate_detections(DetectionSet(CLASSES, samples), perfect(samples))["kitti"]
    exact = evaluate_detections(DetectionSet(CLASSES, samples), perfect(samples), kitti_protocol="exact")["kitti"]
    assert default["protocol"] == "devkit" and default["per_class"]["Pedestrian"]["easy"] == pytest.approx(4 / 40)
    assert exact["protocol"] == "exact" and exact["per_class"]["Pedestrian"]["easy"] == pytest.approx(1.0)


def test_perfect_predictions_on_the_real_frames(kitti_tiny):
    # per class and level, N counted objects: (N - 1)/40 up to 40 objects, 1 above
    data = read_kitti(kitti_tiny, progress=False)
    result = evaluate_kitti(data, perfect(data.samples))
    for name in data.class_names:
        for level in LEVELS:
            n = result["num_objects"][name][level]
            expected = None if n == 0 else (1.0 if n > 40 else (n - 1) / 40)
            assert result["per_class"][name][level] == pytest.approx(expected), (name, level, n)
    assert result["num_objects"]["Pedestrian"]["easy"] == 23  # 55.0 points, as the devkit reports


def test_report_names_the_protocol_beside_the_numbers():
    from detprune.evaluation.report import ModelSummary, Report

    samples = [frame([row(i) for i in range(5)], [PED] * 5)]
    metrics = evaluate_detections(DetectionSet(CLASSES, samples), perfect(samples))
    report = Report({"model": ModelSummary(metrics)})
    assert "## KITTI AP_R40 (devkit)" in report.to_markdown()
    assert any(line.startswith("KITTI AP_R40 (devkit) easy") for line in report.to_table().splitlines())
