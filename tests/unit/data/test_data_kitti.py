"""KITTI label_2 reading: class maps, layouts, every kind of bad input, and the real frames."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.data.classmaps import get_class_map
from detprune.data.kitti import format_kitti_line, read_kitti, read_kitti_results
from detprune.errors import BadInputError

W, H = 200, 100
CAR = "Car 0.00 0 -1.50 10.00 20.00 60.00 70.00 1.50 1.60 4.00 1.00 1.65 20.00 -1.57"


def line(cls: str, box=(10, 20, 60, 70), extra: str = "") -> str:
    x1, y1, x2, y2 = box
    return f"{cls} 0.00 0 -1.50 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 1.50 1.60 4.00 1.00 1.65 20.00 -1.57{extra}"


def make_kitti(root: Path, frames: dict[str, list[str]], suffix: str = ".png", size=(W, H)) -> Path:
    """A KITTI folder with one grey image and one label file per frame."""
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir(parents=True)
    for name, lines in frames.items():
        cv2.imwrite(str(root / "image_2" / f"{name}{suffix}"), np.full((size[1], size[0], 3), 90, np.uint8))
        (root / "label_2" / f"{name}.txt").write_text("".join(f"{text}\n" for text in lines))
    return root


ALL_TYPES = ["Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare"]


@pytest.fixture
def every_type(tmp_path) -> Path:
    boxes = [(5 + 20 * i, 10, 20 + 20 * i, 60) for i in range(len(ALL_TYPES))]
    return make_kitti(tmp_path / "kitti", {"000000": [line(t, b) for t, b in zip(ALL_TYPES, boxes)]})


def as_rows(dataset):
    """(class name or DontCare, ignore) per box, counted."""
    rows = Counter()
    for sample in dataset:
        for label, ignore in zip(sample.labels.tolist(), sample.ignore.tolist()):
            rows[(dataset.class_names[label] if label >= 0 else "DontCare", ignore)] += 1
    return rows


def test_kitti3_follows_the_official_protocol(every_type):
    data = read_kitti(every_type)
    assert data.class_names == ["Car", "Pedestrian", "Cyclist"]
    assert as_rows(data) == {
        ("Car", False): 1, ("Car", True): 1,  # Van: an ignore box with the Car label
        ("Pedestrian", False): 1, ("Pedestrian", True): 1,  # Person_sitting likewise
        ("Cyclist", False): 1, ("DontCare", True): 1,  # Truck, Tram, Misc dropped
    }
    sample = data[0]
    assert sample.width == W and sample.height == H
    np.testing.assert_allclose(sample.boxes[0], [5, 10, 20, 60])


def test_kitti3_merged_and_kitti8_and_dict_maps(every_type):
    merged = read_kitti(every_type, "kitti3-merged")
    assert merged.class_names == ["car", "pedestrian", "cyclist"]
    assert as_rows(merged) == {
        ("car", False): 4,
        ("pedestrian", False): 1,
        ("cyclist", False): 1,
        ("DontCare", True): 1,
    }
    eight = read_kitti(every_type, "kitti8")
    assert len(eight.class_names) == 8
    assert as_rows(eight) == {**{(t, False): 1 for t in ALL_TYPES[:-1]}, ("DontCare", True): 1}
    custom = read_kitti(every_type, {"Car": "vehicle", "Van": "vehicle", "Pedestrian": "person", "Misc": "ignore"})
    assert custom.class_names == ["vehicle", "person"]
    assert as_rows(custom) == {("vehicle", False): 2, ("person", False): 1, ("DontCare", True): 2}


def test_unknown_class_map_is_a_one_line_error():
    with pytest.raises(BadInputError, match="unknown class map 'kitti5'"):
        get_class_map("kitti5")


def test_training_layout_jpeg_and_result_files(tmp_path):
    root = tmp_path / "kitti"
    make_kitti(root / "training", {"000000": [line("Car"), line("Cyclist", (70, 10, 90, 60))]}, suffix=".jpeg")
    data = read_kitti(root)
    assert data[0].image_path.suffix == ".jpeg" and len(data[0].boxes) == 2
    # A result file's 16th field (the score) is tolerated and read back by the results reader.
    results = tmp_path / "results"
    results.mkdir()
    (results / "000000.txt").write_text(format_kitti_line("Car", (1, 2, 30, 40), score=0.75) + "\n")
    detections = read_kitti_results(results, data.class_names)["000000"]
    assert detections.labels.tolist() == [0] and detections.scores.tolist() == [0.75]
    make_kitti(tmp_path / "scored", {"000000": [line("Car", extra=" 0.9")]})
    assert len(read_kitti(tmp_path / "scored")[0].boxes) == 1


def test_truncation_and_occlusion_are_read(tmp_path):
    text = "Car 0.35 2 -1.50 10.00 20.00 60.00 70.00 1.50 1.60 4.00 1.00 1.65 20.00 -1.57"
    data = read_kitti(make_kitti(tmp_path / "k", {"000000": [text, line("DontCare")]}))
    assert data[0].truncation.tolist() == pytest.approx([0.35, 0.0])
    assert data[0].occlusion.tolist() == [2, 0]


BAD_CASES = {
    # name: (label lines of frame 000001, expected message fragment, kind)
    "field count": (
        ["Car 0.00 0 -1.50 10.00 20.00 60.00 70.00 1.50"],
        "000001.txt:2: expected 15 fields, got 9",
        "malformed line",
    ),
    "not a number": (
        [line("Car").replace("60.00", "6O.00")],
        "000001.txt:2: field 7 (x2) is not a number: '6O.00'",
        "malformed line",
    ),
    "degenerate": (
        [line("Car", (60, 20, 60, 70))],
        "000001.txt:2: degenerate box (60, 20, 60, 70) (x2 <= x1)",
        "degenerate box",
    ),
    "upside down": ([line("Car", (10, 70, 60, 20))], "(y2 <= y1)", "degenerate box"),
    "out of image": (
        [line("Car", (150, 20, 260, 70))],
        "000001.txt:2: box (150, 20, 260, 70) lies outside the 200x100 image",
        "out-of-image box",
    ),
    "unknown class": ([line("Bus")], "000001.txt:2: unknown class 'Bus'", "unknown class"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_lines_fail_naming_file_and_line_or_are_skipped(tmp_path, case, caplog):
    lines, fragment, kind = BAD_CASES[case]
    root = make_kitti(tmp_path / "k", {"000000": [CAR], "000001": [CAR, *lines]})
    with pytest.raises(BadInputError) as err:
        read_kitti(root)
    message = str(err.value)
    assert fragment in message and "label_2" in message and "\n" not in message
    if case == "field count":  # the line number counts from 1 in the file, blank lines included
        (root / "label_2" / "000001.txt").write_text(f"{CAR}\n\n{CAR}\n{lines[0]}\n")
        with pytest.raises(BadInputError, match=r"label_2/000001\.txt:4: expected 15 fields, got 9"):
            read_kitti(root)
    with caplog.at_level(logging.WARNING, logger="detprune.data"):
        data = read_kitti(root, skip_bad=True)
    assert data.skipped == {kind: 1}
    assert sum(len(s.boxes) for s in data) == (3 if case == "field count" else 2)  # the good lines stay
    assert any("skipped 1 bad input" in r.getMessage() and kind in r.getMessage() for r in caplog.records)


def test_bad_frames_label_without_image_unreadable_image_image_without_label(tmp_path):
    root = make_kitti(tmp_path / "k", {"000000": [CAR], "000001": [CAR], "000002": [CAR]})
    (root / "image_2" / "000001.png").unlink()  # a label without an image
    (root / "image_2" / "000002.png").write_bytes(b"not a png")  # an unreadable image
    cv2.imwrite(str(root / "image_2" / "000003.png"), np.zeros((H, W, 3), np.uint8))  # an image without labels
    with pytest.raises(BadInputError, match=r"000003\.png: image has no label file"):
        read_kitti(root)
    (root / "image_2" / "000003.png").unlink()
    with pytest.raises(BadInputError, match=r"label_2/000001\.txt: no image 000001"):
        read_kitti(root)
    (root / "label_2" / "000001.txt").unlink()
    with pytest.raises(BadInputError, match=r"000002\.png: cannot read image"):
        read_kitti(root)
    cv2.imwrite(str(root / "image_2" / "000003.png"), np.zeros((H, W, 3), np.uint8))
    (root / "label_2" / "000004.txt").write_text(CAR + "\n")
    data = read_kitti(root, skip_bad=True)
    assert [s.image_id for s in data] == ["000000"]
    assert data.skipped == {"image without label": 1, "unreadable image": 1, "label without image": 1}


def test_many_problems_are_counted_per_kind(tmp_path):
    lines = [
        CAR,
        "Car 1 2",
        line("Bus"),
        line("Truck", (5, 5, 4, 9)),
        line("Car").replace("1.65", "x"),
        line("Misc", (0, 0, 500, 50)),
    ]
    data = read_kitti(make_kitti(tmp_path / "k", {"000000": lines}), skip_bad=True)
    assert len(data[0].boxes) == 1
    assert data.skipped == {"malformed line": 2, "unknown class": 1, "degenerate box": 1, "out-of-image box": 1}


def test_empty_or_missing_folders_are_one_line_errors(tmp_path):
    with pytest.raises(BadInputError, match="not a KITTI folder"):
        read_kitti(tmp_path)
    (tmp_path / "image_2").mkdir()
    (tmp_path / "label_2").mkdir()
    with pytest.raises(BadInputError, match="no label files"):
        read_kitti(tmp_path, skip_bad=True)
    make_kitti(tmp_path / "bad", {"000000": [CAR]})
    (tmp_path / "bad" / "image_2" / "000000.png").write_bytes(b"")
    with pytest.raises(BadInputError, match="no usable frames.*1 unreadable image"):
        read_kitti(tmp_path / "bad", skip_bad=True)


def test_reading_never_modifies_the_input(every_type):
    before = {p: p.read_bytes() for p in every_type.rglob("*") if p.is_file()}
    read_kitti(every_type, skip_bad=True)
    assert {p: p.read_bytes() for p in every_type.rglob("*") if p.is_file()} == before


# -- the real frames -----------------------------------------------------------------------

KITTI_TINY_TOTALS = {"Car": 209, "DontCare": 188, "Pedestrian": 36, "Van": 25, "Cyclist": 14, "Truck": 10,
                     "Tram": 9, "Person_sitting": 5, "Misc": 3}


def test_kitti_tiny_counts(kitti_tiny):
    raw = read_kitti(kitti_tiny, "kitti8", progress=False)
    assert len(raw) == 75
    counts = Counter()
    for sample in raw:
        for label in sample.labels.tolist():
            counts[raw.class_names[label] if label >= 0 else "DontCare"] += 1
    assert counts == KITTI_TINY_TOTALS and sum(counts.values()) == 499
    assert {s.width for s in raw} >= {1242} and all(s.height in range(370, 377) for s in raw)
    official = read_kitti(kitti_tiny, "kitti3", progress=False)
    rows = as_rows(official)
    assert rows[("Car", False)] == 209 and rows[("Car", True)] == 25
    assert rows[("Pedestrian", True)] == 5 and rows[("Cyclist", False)] == 14
