"""KITTI copies that merged Van/Truck/Tram into OtherVehicle and have no DontCare (like kitti_2k):
read as the devkit's neighbour rule allows, and every number from them says so."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.data.class_match import align_classes
from detprune.data.kitti import format_kitti_line, read_kitti
from detprune.data.stats import dataset_stats, format_stats
from detprune.data.types import Detections
from detprune.evaluation.protocol import evaluate_detections
from detprune.evaluation.report import ModelSummary, Report

W, H = 400, 200
PHRASE = "OtherVehicle (merged Van/Truck/Tram) ignored for Car; no DontCare regions"
OTHER_VEHICLE_BOX = (220.0, 30.0, 300.0, 120.0)
# frame -> (type, box, truncation, occlusion); comments: the KITTI levels each counts at (kitti3)
FRAMES = {
    "000000": [
        ("Car", (10, 10, 110, 80), 0.0, 0),  # h 70, visible: easy, moderate, hard
        ("Car", (150, 20, 200, 50), 0.2, 1),  # h 30, partly occluded: moderate, hard
        ("OtherVehicle", OTHER_VEHICLE_BOX, 0.0, 0),  # an ignore box of Car, never counted; 80 x 90 px: medium
        ("Pedestrian", (310, 40, 330, 100), 0.4, 2),  # largely occluded: hard
    ],
    "000001": [
        ("Person_sitting", (20, 50, 50, 110), 0.0, 0),  # an ignore box of Pedestrian
        ("Cyclist", (100, 60, 130, 120), 0.0, 0),  # easy, moderate, hard
        ("Car", (200, 100, 260, 120), 0.0, 0),  # h 20: too short for any level
    ],
    "000002": [
        ("Car", (50, 50, 150, 150), 0.0, 3),  # occlusion unknown: no level
        ("Pedestrian", (200, 20, 230, 70), 0.1, 1),  # moderate, hard
        ("OtherVehicle", (290, 80, 395, 195), 0.0, 1),  # 105 x 115 px: large
    ],
}
COUNTS = {"Car": {"easy": 1, "moderate": 2, "hard": 2}, "Pedestrian": {"easy": 0, "moderate": 1, "hard": 2},
          "Cyclist": {"easy": 1, "moderate": 1, "hard": 1}}


@pytest.fixture
def merged(tmp_path) -> Path:
    root = tmp_path / "kitti_merged"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    for frame, objects in FRAMES.items():
        cv2.imwrite(str(root / "image_2" / f"{frame}.png"), np.full((H, W, 3), 90, np.uint8))
        lines = [format_kitti_line(t, box, truncated=trunc, occluded=occ) for t, box, trunc, occ in objects]
        (root / "label_2" / f"{frame}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_labels_ignore_flags_and_sources_as_constructed(merged):
    data = read_kitti(merged, progress=False)
    assert data.class_names == ["Car", "Pedestrian", "Cyclist"] and data.deviation == PHRASE
    first, second, third = data.samples
    assert first.labels.tolist() == [0, 0, 0, 1] and first.ignore.tolist() == [False, False, True, False]
    assert first.source.tolist() == ["Car", "Car", "OtherVehicle", "Pedestrian"]
    assert second.labels.tolist() == [1, 2, 0] and second.ignore.tolist() == [True, False, False]
    assert third.ignore.tolist() == [False, False, True] and not (third.labels < 0).any()
    assert first.occlusion.tolist() == [0, 1, 0, 2] and first.truncation[1] == pytest.approx(0.2)
    # subsets, the class alignment a model's names force, and other class maps keep saying it
    assert data.subset([2]).deviation == PHRASE and data[1:].deviation == PHRASE
    aligned = align_classes(data, ["cyclist", "car", "pedestrian"], notify=None)
    assert aligned.deviation == PHRASE and aligned.samples[0].source.tolist() == first.source.tolist()
    merged_map = read_kitti(merged, "kitti3-merged", progress=False)
    assert merged_map.deviation == "OtherVehicle (merged Van/Truck/Tram) counted as car; no DontCare regions"
    assert merged_map.samples[0].labels.tolist() == [0, 0, 0, 1] and not merged_map.samples[0].ignore.any()
    kitti8 = read_kitti(merged, "kitti8", progress=False)
    assert kitti8.deviation.startswith("OtherVehicle (merged Van/Truck/Tram) a class-less ignore region")
    assert kitti8.samples[0].labels[2] == -1


def _perfect(data, extra=None) -> list[Detections]:
    """A detection on every object that counts, plus ``extra`` (frame index, box, label, score)."""
    out = []
    for i, sample in enumerate(data.samples):
        keep = ~sample.ignore & (sample.labels >= 0)
        boxes, labels = list(sample.boxes[keep]), list(sample.labels[keep])
        scores = list(np.linspace(0.9, 0.5, len(boxes)))
        if extra and extra[0] == i:
            boxes.append(extra[1]), labels.append(extra[2]), scores.append(extra[3])
        out.append(Detections(np.array(boxes).reshape(-1, 4), scores, labels))
    return out


def test_kitti_counts_per_level_and_the_phrase_in_every_printed_table(merged):
    data = read_kitti(merged, progress=False)
    metrics = evaluate_detections(data, _perfect(data))
    kitti = metrics["kitti"]
    assert kitti["num_objects"] == COUNTS
    assert kitti["deviation"] == PHRASE
    report = Report({"model": ModelSummary(metrics)})
    for text in (report.to_table(), report.to_detail_tables(), report.to_markdown()):
        assert "KITTI AP_R40 (devkit)†" in text and f"† KITTI labels not as the devkit's: {PHRASE}" in text


def test_a_car_detection_on_other_vehicle_is_ignored_but_one_on_background_is_a_false_positive(merged):
    data = read_kitti(merged, progress=False)
    base = evaluate_detections(data, _perfect(data))["kitti"]["per_class"]["Car"]["moderate"]
    on_other = evaluate_detections(data, _perfect(data, (0, OTHER_VEHICLE_BOX, 0, 0.99)))["kitti"]
    elsewhere = evaluate_detections(data, _perfect(data, (0, (320.0, 110.0, 390.0, 190.0), 0, 0.99)))["kitti"]
    assert on_other["per_class"]["Car"]["moderate"] == base
    assert elsewhere["per_class"]["Car"]["moderate"] < base


def test_kitti_as_kitti_writes_it_has_no_deviation(merged):
    (merged / "label_2" / "000001.txt").write_text(format_kitti_line("DontCare", (300, 10, 340, 40)) + "\n"
                                                   + format_kitti_line("Van", (10, 10, 80, 60)) + "\n")
    (merged / "label_2" / "000000.txt").write_text(format_kitti_line("Car", (10, 10, 110, 80)) + "\n")
    (merged / "label_2" / "000002.txt").write_text("")
    data = read_kitti(merged, progress=False)
    assert data.deviation == ""
    metrics = evaluate_detections(data, _perfect(data))
    assert "deviation" not in metrics["kitti"] and "†" not in Report({"m": ModelSummary(metrics)}).to_table()


def test_stats_count_other_vehicle_ignore_boxes_by_size(merged, capsys):
    from detprune.cli import main

    stats = dataset_stats(read_kitti(merged, progress=False))
    other = {"boxes": 2, "as": "ignore box of Car", "small": 0, "medium": 1, "large": 1}
    assert stats["sources"]["OtherVehicle"] == other
    assert stats["sources"]["Person_sitting"]["as"] == "ignore box of Pedestrian"
    assert stats["classes"]["Car"]["ignore"] == 2 and stats["deviation"] == PHRASE
    assert main(["data", "stats", str(merged)]) == 0
    out = capsys.readouterr().out
    assert out == format_stats(stats) + "\n"
    row = next(line for line in out.splitlines() if line.startswith("OtherVehicle"))
    assert row.split() == ["OtherVehicle", "2", "ignore", "box", "of", "Car", "0", "1", "1"]
    assert f"labels not as KITTI's: {PHRASE}" in out


def test_the_real_2k_frames_carry_the_phrase_and_their_counts():
    root = Path(__file__).resolve().parents[4] / "shared" / "data" / "kitti_2k"
    if not (root / "label_2").is_dir():
        pytest.skip(f"kitti_2k not found at {root}")
    data = read_kitti(root, progress=False)
    stats = dataset_stats(data)
    assert data.deviation == PHRASE and len(data) == 2000
    assert {k: v["boxes"] for k, v in stats["sources"].items()} == {
        "Car": 7557, "Pedestrian": 1241, "OtherVehicle": 1115, "Cyclist": 418, "Person_sitting": 46}
