"""``detprune data synth|stats|convert``: return codes, tables, one-line errors, and stats figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detprune.cli import main
from detprune.data.stats import dataset_stats, size_bucket
from detprune.data.types import DetectionSet, Sample


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "scenes"
    assert (
        main(["data", "synth", str(root), "--num-images", "6", "--seed", "3", "--width", "320", "--height", "128"]) == 0
    )
    return root


def test_synth_then_stats_table_json_and_plot(scenes, capsys, tmp_path):
    assert len(list((scenes / "image_2").glob("*.png"))) == 6
    code, out, _ = run(capsys, "stats", scenes, "--plot", tmp_path / "sizes.png")
    assert code == 0
    assert "scenes: 6 images" in out and "Pedestrian" in out and "small (< 32x32 px) share" in out
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "stats", scenes, "--json")
    stats = json.loads(out)
    labelled = sum(1 for p in (scenes / "label_2").glob("*.txt") for line in p.read_text().splitlines()
                   if line.split()[0] in {"Car", "Pedestrian", "Cyclist"})
    assert stats["objects"] == labelled and stats["images"] == 6
    assert sum(stats["sizes"].values()) == stats["objects"]


def test_synth_refuses_an_existing_folder(scenes, capsys):
    code, _, err = run(capsys, "synth", scenes, "--num-images", "1")
    assert code == 2 and err.count("\n") == 1 and "already exists" in err and "--exist-ok" in err


def test_convert_to_yolo_and_coco(scenes, capsys, tmp_path):
    before = sorted((p.name, p.stat().st_size) for p in scenes.rglob("*"))
    code, out, _ = run(capsys, "convert", scenes, "--to", "yolo", "--out", tmp_path / "yolo", "--val-count", "2")
    assert code == 0 and "train 4 images" in out and "val 2 images" in out
    assert (tmp_path / "yolo" / "data.yaml").is_file()
    code, _, err = run(capsys, "convert", scenes, "--to", "yolo", "--out", tmp_path / "yolo")
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert run(capsys, "convert", scenes, "--to", "yolo", "--out", tmp_path / "yolo", "--exist-ok")[0] == 0
    code, out, _ = run(capsys, "convert", scenes, "--to", "coco", "--out", tmp_path / "coco", "--seed", "1")
    assert code == 0 and (tmp_path / "coco" / "annotations" / "instances_val.json").is_file()
    assert sorted((p.name, p.stat().st_size) for p in scenes.rglob("*")) == before
    # A folder that is not ours is never replaced, and the output may not overlap the input.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    code, _, err = run(capsys, "convert", scenes, "--to", "yolo", "--out", foreign, "--exist-ok")
    assert code == 2 and "refusing to replace" in err and (foreign / "keep.txt").exists()
    code, _, err = run(capsys, "convert", scenes, "--to", "coco", "--out", scenes / "coco")
    assert code == 2 and "overlaps the input" in err


def test_bad_input_fails_with_the_line_or_is_skipped_and_counted(scenes, capsys, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(scenes, copy)
    label = copy / "label_2" / "000002.txt"
    label.write_text(label.read_text() + "Car 0 0 0 1 2 3\nBus 0.00 0 0.00 1.00 1.00 9.00 9.00 1 1 1 1 1 1 0\n")
    lines = len(label.read_text().splitlines())
    code, _, err = run(capsys, "stats", copy)
    assert code == 2 and err.count("\n") == 1
    assert f"label_2/000002.txt:{lines - 1}: expected 15 fields, got 7" in err
    code, out, err = run(capsys, "stats", copy, "--skip-bad")
    assert code == 0 and "skipped bad inputs: 1 malformed line, 1 unknown class" in out
    code, out, _ = run(capsys, "convert", copy, "--to", "yolo", "--out", tmp_path / "y", "--skip-bad")
    assert code == 0 and "skipped bad inputs: 1 malformed line, 1 unknown class" in out
    code, _, err = run(capsys, "stats", tmp_path / "nothing-here")
    assert code == 2 and "no such file or folder" in err
    code, _, err = run(capsys, "stats", copy, "--class-map", "kitti5")
    assert code == 2 and "unknown class map 'kitti5'" in err


def test_stats_counts_sizes_and_ignore_boxes():
    boxes = [[0, 0, 10, 10], [0, 0, 31, 33], [0, 0, 40, 40], [0, 0, 100, 100], [0, 0, 50, 50], [0, 0, 5, 5]]
    sample = Sample(Path("a.png"), 200, 200, boxes, [0, 0, 1, 1, 1, -1], [False, False, False, False, True, True])
    assert size_bucket(np.array(boxes, np.float32)).tolist() == [0, 0, 1, 2, 1, 0]
    stats = dataset_stats(DetectionSet(["car", "person"], [sample, Sample(Path("b.png"), 200, 200)], "toy"))
    assert stats["objects"] == 4 and stats["ignore_boxes"] == 1 and stats["ignore_regions"] == 1
    assert stats["classes"]["car"] == {
        "objects": 2,
        "ignore": 0,
        "small": 2,
        "medium": 0,
        "large": 0,
        "median_height": 21.5,
    }
    assert stats["classes"]["person"]["ignore"] == 1 and stats["classes"]["person"]["medium"] == 1
    assert stats["sizes"] == {"small": 2, "medium": 1, "large": 1} and stats["small_share"] == 0.5
    assert stats["boxes_per_image"]["max"] == 4 and stats["boxes_per_image"]["images_without_objects"] == 1


def test_stats_on_the_real_frames(kitti_tiny, capsys):
    code, out, _ = run(capsys, "stats", kitti_tiny, "--class-map", "kitti8", "--json")
    stats = json.loads(out)
    assert code == 0 and stats["images"] == 75
    assert stats["objects"] + stats["ignore_regions"] == 499 and stats["ignore_regions"] == 188


def test_a_class_map_yaml_merges_classes_on_the_command_line(scenes, capsys, tmp_path):
    # raw KITTI names -> our class names: two classes, cyclists counted as pedestrians
    mapping = tmp_path / "map.yaml"
    mapping.write_text("Car: vehicle\nPedestrian: person\nCyclist: person\n")
    code, out, _ = run(capsys, "stats", scenes, "--class-map", mapping, "--json")
    merged = json.loads(out)
    code3, out3, _ = run(capsys, "stats", scenes, "--json")
    three = json.loads(out3)
    assert code == code3 == 0
    assert sorted(merged["classes"]) == ["person", "vehicle"]
    count = {name: c["objects"] for name, c in merged["classes"].items()}
    raw = {name: c["objects"] for name, c in three["classes"].items()}
    assert count == {"vehicle": raw["Car"], "person": raw["Pedestrian"] + raw["Cyclist"]}
