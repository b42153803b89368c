"""KITTI result files: written in label_2 format with a score, read back by detprune's reader to the same AP."""

from __future__ import annotations

import numpy as np
import pytest

from detprune.data.kitti import FIELD_NAMES, read_kitti, read_kitti_results
from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import DetpruneError
from detprune.evaluation.kitti import evaluate_kitti
from detprune.evaluation.kitti_results import write_kitti_results

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def scene() -> tuple[DetectionSet, list[Detections]]:
    a = Sample("img/000007.png", 1242, 375, [[10, 100, 60, 160], [100, 100, 140, 130]], [0, 1])
    b = Sample("img/000011.png", 1242, 375, [[10, 100, 60, 160]], [2])
    preds = [
        Detections(
            [[11.25, 101.5, 59.75, 161.0], [100, 100, 140, 130], [500, 50, 530, 90]], [0.875, 0.5, 0.25], [0, 1, 2]
        ),
        Detections(np.zeros((0, 4)), [], []),
    ]
    return DetectionSet(CLASSES, [a, b]), preds


def test_lines_follow_the_label_2_format_with_placeholders_and_a_score(tmp_path):
    data, preds = scene()
    assert write_kitti_results(data, preds, tmp_path / "res") == 2
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["000007.txt", "000011.txt"]
    assert (tmp_path / "res" / "000011.txt").read_text() == ""  # no detection: an empty file
    first = (tmp_path / "res" / "000007.txt").read_text().splitlines()[0].split()
    assert len(first) == len(FIELD_NAMES) == 16
    assert first[0] == "Car" and [float(v) for v in first[1:4]] == [-1, -1, -10]
    assert [float(v) for v in first[4:8]] == [11.25, 101.5, 59.75, 161.0]
    assert [float(v) for v in first[8:15]] == [-1, -1, -1, -1000, -1000, -1000, -10]
    assert float(first[15]) == 0.875


def test_read_back_and_re_evaluated_gives_the_same_ap(tmp_path):
    data, preds = scene()
    write_kitti_results(data, preds, tmp_path / "res")
    back = read_kitti_results(tmp_path / "res", CLASSES)
    again = [back[s.image_id] for s in data.samples]
    for before, after in zip(preds, again):
        np.testing.assert_array_equal(before.boxes, after.boxes)
        np.testing.assert_array_equal(before.labels, after.labels)
    assert evaluate_kitti(data, again) == evaluate_kitti(data, preds)


def test_real_frames_round_trip(kitti_tiny, tmp_path):
    data = read_kitti(kitti_tiny, progress=False)
    rng = np.random.default_rng(0)
    preds = []
    for s in data.samples:
        keep = s.labels >= 0
        noisy = np.round(s.boxes[keep] + rng.normal(0, 2, (int(keep.sum()), 4)), 2)
        preds.append(Detections(noisy, np.round(rng.random(int(keep.sum())), 4), s.labels[keep]))
    assert write_kitti_results(data, preds, tmp_path / "res") == len(data)
    back = read_kitti_results(tmp_path / "res", data.class_names)
    assert evaluate_kitti(data, [back[s.image_id] for s in data.samples]) == evaluate_kitti(data, preds)


def test_refuses_a_non_empty_folder_unless_allowed(tmp_path):
    data, preds = scene()
    out = tmp_path / "res"
    out.mkdir()
    (out / "old.txt").write_text("stale\n")
    with pytest.raises(DetpruneError, match="not empty"):
        write_kitti_results(data, preds, out)
    assert (out / "old.txt").read_text() == "stale\n"
    write_kitti_results(data, preds, out, exist_ok=True)  # replaced as a whole
    assert sorted(p.name for p in out.iterdir()) == ["000007.txt", "000011.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_kitti_results(data, preds, empty) == 2


def test_class_names_and_bad_inputs(tmp_path):
    data, preds = scene()
    write_kitti_results(data, preds, tmp_path / "lower", class_names=["car", "pedestrian", "cyclist"])
    assert (tmp_path / "lower" / "000007.txt").read_text().split()[0] == "car"
    with pytest.raises(DetpruneError, match="2 class names"):
        write_kitti_results(data, preds, tmp_path / "x", class_names=["Car", "Pedestrian"])
    with pytest.raises(DetpruneError, match="space"):
        write_kitti_results(data, preds, tmp_path / "x", class_names=["Car", "Person sitting", "Cyclist"])
    with pytest.raises(DetpruneError, match="predictions"):
        write_kitti_results(data, preds[:1], tmp_path / "x")
    twin = DetectionSet(CLASSES, [data[0], Sample("other/000007.png", 1242, 375)])
    with pytest.raises(DetpruneError, match="000007"):
        write_kitti_results(twin, preds, tmp_path / "x")
    assert not (tmp_path / "x").exists()
