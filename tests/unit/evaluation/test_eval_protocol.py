"""The toolkit's evaluation entry: result shape, protocol choice, input checks, real KITTI frames."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest

from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import BadInputError, DetpruneError
from detprune.evaluation import evaluate_detections, looks_like_kitti

FLAT_KEYS = {
    "mAP",
    "mAP50",
    "mAP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR100",
    "per_class_AP",
    "num_images",
    "num_objects",
}


def scene(class_names, **attributes) -> DetectionSet:
    boxes = np.array([[10, 10, 110, 110], [200, 10, 300, 110], [400, 10, 500, 110]], np.float32)
    return DetectionSet(class_names, [Sample("a.png", 640, 480, boxes, [0, 1, -1], [False, False, True], **attributes)])


def perfect(data: DetectionSet) -> list[Detections]:
    out = []
    for s in data:
        keep = ~s.ignore & (s.labels >= 0)
        out.append(Detections(s.boxes[keep], np.linspace(0.9, 0.1, keep.sum()), s.labels[keep]))
    return out


def test_flat_result_for_kitti_classes():
    data = scene(["Car", "Pedestrian", "Cyclist"])
    result = evaluate_detections(data, perfect(data))
    assert set(result) == FLAT_KEYS | {"kitti"}
    assert result["mAP"] == pytest.approx(1.0) and result["mAP50"] == pytest.approx(1.0)
    assert result["num_images"] == 1 and result["num_objects"] == 2
    # one car, found: the devkit keeps one threshold (slot 0 = 1) -> AP_R40 0, AP_R11 1/11
    assert result["kitti"]["protocol"] == "devkit"
    assert result["kitti"]["per_class"]["Car"]["moderate"] == 0.0
    assert result["kitti"]["per_class_R11"]["Car"]["moderate"] == pytest.approx(1 / 11)
    assert result["per_class_AP"]["Cyclist"] is None


def test_protocol_choice():
    coco_traffic = scene(["person", "bicycle", "car", "motorcycle", "bus", "truck", "traffic light", "stop sign"])
    assert not looks_like_kitti(coco_traffic)
    assert "kitti" not in evaluate_detections(coco_traffic, perfect(coco_traffic))
    assert "kitti" in evaluate_detections(coco_traffic, perfect(coco_traffic), kitti=True)
    assert looks_like_kitti(scene(["car", "pedestrian", "cyclist"]))  # the merged 3-class set
    assert looks_like_kitti(scene(["a", "b"], occlusion=[1, 0, 0]))  # KITTI attributes on the boxes
    kitti = scene(["Car", "Pedestrian"])
    assert "kitti" not in evaluate_detections(kitti, perfect(kitti), kitti=False)


def test_kitti_overlap_override_reaches_the_protocol():
    data = scene(["Car", "Pedestrian"])
    loose = [Detections([[35, 10, 135, 110]], [0.9], [0])]  # IoU 0.6 with the car
    strict = evaluate_detections(data, loose)["kitti"]["per_class_R11"]["Car"]["moderate"]
    relaxed = evaluate_detections(data, loose, kitti_min_overlap={"Car": 0.5})["kitti"]["per_class_R11"]["Car"][
        "moderate"
    ]
    assert strict == 0.0 and relaxed == pytest.approx(1 / 11)  # one car found: devkit slot 0 of 11


def test_bad_inputs_raise_one_line_errors():
    data = scene(["Car", "Pedestrian"])
    with pytest.raises(DetpruneError, match="2 predictions for 1 images") as err:
        evaluate_detections(data, perfect(data) * 2)
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match=r"predictions\[0\] \(a\): label outside 0..1"):
        evaluate_detections(data, [Detections([[0, 0, 10, 10]], [0.5], [2])])
    with pytest.raises(BadInputError, match="non-finite"):
        evaluate_detections(data, [Detections([[0, 0, np.nan, 10]], [0.5], [0])])
    with pytest.raises(DetpruneError, match="no images"):
        evaluate_detections(DetectionSet(["Car"], []), [])


# -- real KITTI frames ---------------------------------------------------------------------

def _read_kitti_tiny(root: Path) -> DetectionSet:
    try:
        from detprune.data.kitti import read_kitti
    except ImportError:
        return _parse_labels(root / "training" / "label_2")
    return read_kitti(root, "kitti3", progress=False)


def _parse_labels(label_dir: Path) -> DetectionSet:
    """KITTI's official 3 classes; Van / Person_sitting as labelled ignore boxes, DontCare as a region."""
    rules = {"Car": (0, False), "Pedestrian": (1, False), "Cyclist": (2, False), "Van": (0, True),
             "Person_sitting": (1, True), "DontCare": (-1, True)}
    samples = []
    for path in sorted(label_dir.glob("*.txt")):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r[0] in rules]
        samples.append(Sample(
            path.with_suffix(".png"), 1242, 375,
            np.array([[float(v) for v in r[4:8]] for r in rows], np.float32).reshape(-1, 4),
            [rules[r[0]][0] for r in rows], [rules[r[0]][1] for r in rows],
            [min(max(float(r[1]), 0.0), 1.0) for r in rows], [int(r[2]) if int(r[2]) >= 0 else 3 for r in rows],
        ))
    return DetectionSet(["Car", "Pedestrian", "Cyclist"], samples, "kitti_tiny")


@pytest.mark.shared
def test_kitti_tiny_ground_truth_as_predictions(kitti_tiny):
    data = _read_kitti_tiny(kitti_tiny)
    preds = perfect(data)
    # the exact-recall protocol, where perfect is 1 at any class size (the devkit's is tested in
    # test_eval_kitti_devkit.py)
    evaluate = partial(evaluate_detections, kitti_protocol="exact")
    result = evaluate(data, preds)
    assert result["num_images"] == 75 and result["num_objects"] > 200
    assert result["mAP"] == pytest.approx(1.0)
    kitti = result["kitti"]
    assert kitti["num_objects"]["Car"]["moderate"] > 100
    for name, levels in kitti["per_class"].items():
        for level, value in levels.items():
            assert value is None or value == pytest.approx(1.0), (name, level)

    # drop every other car's prediction: car AP falls, the other classes keep theirs
    car = data.class_names.index("Car")
    parity = 0
    thinned = []
    for dets in preds:
        keep = np.ones(len(dets.labels), bool)
        for i in np.flatnonzero(dets.labels == car):
            keep[i] = parity % 2 == 0
            parity += 1
        thinned.append(Detections(dets.boxes[keep], dets.scores[keep], dets.labels[keep]))
    worse = evaluate(data, thinned)
    assert worse["per_class_AP"]["Car"] < 0.7
    for level in ("easy", "moderate", "hard"):
        assert 0.3 < worse["kitti"]["per_class"]["Car"][level] < 0.7
    assert worse["kitti"]["per_class"]["Pedestrian"]["moderate"] == pytest.approx(1.0)
