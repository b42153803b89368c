"""COCO metrics through pycocotools on scenes whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from detprune.data.types import DetectionSet, Detections, Sample
from detprune.evaluation.coco import evaluate_coco

CLASSES = ["car", "person"]
CAR, PERSON, REGION = 0, 1, -1
# COCO interpolates precision at 101 recall points 0, .01, .., 1; recall 1/2 reaches 51 of them.
HALF_RECALL_AP = 51 / 101


def sample(boxes, labels, ignore=None, name="img") -> Sample:
    return Sample(f"{name}.png", 640, 480, np.array(boxes, np.float32).reshape(-1, 4), labels,
                  ignore if ignore is not None else [lbl < 0 for lbl in labels])


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, labels)


BIG = [[10, 10, 110, 110], [200, 10, 300, 110]]  # 100 x 100: "large" (area > 96^2)


def test_perfect_predictions_give_one(capsys):
    data = DetectionSet(CLASSES, [sample(BIG, [CAR, PERSON], name="a"), sample([[50, 50, 150, 150]], [CAR], name="b")])
    preds = [dets(s.boxes, np.full(len(s.boxes), 0.9), s.labels) for s in data]
    result = evaluate_coco(data, preds)
    for key in ("AP", "AP50", "AP75", "AP_large", "AR100"):
        assert result[key] == pytest.approx(1.0)
    assert result["AP_small"] is None and result["AP_medium"] is None  # no objects of those sizes
    assert result["per_class_AP"] == {"car": pytest.approx(1.0), "person": pytest.approx(1.0)}
    assert capsys.readouterr().out == ""  # pycocotools kept quiet


def test_half_the_objects_missed():
    data = DetectionSet(CLASSES, [sample(BIG, [CAR, CAR])])
    result = evaluate_coco(data, [dets(BIG[:1], [0.9], [CAR])])
    assert result["AP"] == pytest.approx(HALF_RECALL_AP)
    assert result["AR100"] == pytest.approx(0.5)


def test_loose_box_counts_at_iou_half_only():
    data = DetectionSet(CLASSES, [sample(BIG[:1], [CAR])])
    loose = [[37, 10, 137, 110]]  # IoU 73 / 127 = 0.575
    result = evaluate_coco(data, [dets(loose, [0.9], [CAR])])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["AP"] == pytest.approx(0.2)  # found at IoU .50 and .55: 2 of 10 thresholds


def test_ignore_box_neither_required_nor_false_positive():
    data = DetectionSet(CLASSES, [sample(BIG, [CAR, CAR], ignore=[False, True])])
    assert evaluate_coco(data, [dets(BIG[:1], [0.8], [CAR])])["AP"] == pytest.approx(1.0)
    on_ignored = evaluate_coco(data, [dets(BIG, [0.8, 0.9], [CAR, CAR])])
    assert on_ignored["AP"] == pytest.approx(1.0)
    elsewhere = evaluate_coco(data, [dets([BIG[0], [400, 300, 500, 400]], [0.8, 0.9], [CAR, CAR])])
    assert elsewhere["AP"] < 0.99


def test_class_less_region_excuses_detections_of_every_class():
    region = [300, 200, 500, 400]
    inside = [320, 220, 480, 380]
    data = DetectionSet(CLASSES, [sample([BIG[0], BIG[1], region], [CAR, PERSON, REGION])])
    base = [BIG[0], BIG[1]]
    for label in (CAR, PERSON):
        preds = [dets(base + [inside], [0.8, 0.8, 0.9], [CAR, PERSON, label])]
        assert evaluate_coco(data, preds)["per_class_AP"] == {"car": pytest.approx(1.0), "person": pytest.approx(1.0)}
    # the same detections without the region are false positives
    no_region = DetectionSet(CLASSES, [sample(BIG, [CAR, PERSON])])
    result = evaluate_coco(no_region, [dets(base + [inside], [0.8, 0.8, 0.9], [CAR, PERSON, PERSON])])
    assert result["per_class_AP"]["person"] < 0.99
    assert result["per_class_AP"]["car"] == pytest.approx(1.0)


def test_size_buckets():
    small = [10, 10, 30, 30]  # 20 x 20 = 400 < 32^2
    medium = [100, 100, 150, 150]  # 50 x 50 = 2500
    data = DetectionSet(CLASSES, [sample([small, medium, BIG[1]], [CAR, CAR, CAR])])
    result = evaluate_coco(data, [dets([medium, BIG[1]], [0.9, 0.8], [CAR, CAR])])
    assert result["AP_small"] == pytest.approx(0.0)
    assert result["AP_medium"] == pytest.approx(1.0)
    assert result["AP_large"] == pytest.approx(1.0)


def test_images_without_detections_or_objects():
    data = DetectionSet(CLASSES, [sample(BIG[:1], [CAR], name="a"), sample([], [], name="b")])
    nothing = evaluate_coco(data, [dets([], [], []), dets([], [], [])])
    assert nothing["AP"] == pytest.approx(0.0)
    assert nothing["per_class_AP"] == {"car": pytest.approx(0.0), "person": None}
    # a detection on the empty image is a false positive, ranked above the true one
    fp = evaluate_coco(data, [dets(BIG[:1], [0.5], [CAR]), dets([[0, 0, 100, 100]], [0.9], [CAR])])
    assert fp["AP"] == pytest.approx(0.5)  # interpolated precision is 1/2 at every recall


def test_no_objects_at_all_gives_none():
    data = DetectionSet(CLASSES, [sample([], [])])
    result = evaluate_coco(data, [dets([[0, 0, 10, 10]], [0.9], [CAR])])
    assert result["AP"] is None and result["per_class_AP"] == {"car": None, "person": None}
