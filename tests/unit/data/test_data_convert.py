"""Converters: KITTI -> YOLO -> read back, COCO ground truth in pycocotools, seeded splits."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.data.convert import coco_image_ids, split_dataset, write_coco_json, write_yolo_dataset
from detprune.data.kitti import read_kitti
from detprune.data.types import DetectionSet, Sample
from detprune.data.yolo_format import read_yolo_dir, read_yolo_yaml
from detprune.errors import BadInputError

W, H = 240, 120


def kitti_line(cls: str, box) -> str:
    x1, y1, x2, y2 = box
    return f"{cls} 0.00 0 -1.50 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 1.50 1.60 4.00 1.00 1.65 20.00 -1.57"


def make_kitti(root: Path, frames: dict[str, list[str]]) -> Path:
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    for name, lines in frames.items():
        cv2.imwrite(str(root / "image_2" / f"{name}.png"), np.full((H, W, 3), 100, np.uint8))
        (root / "label_2" / f"{name}.txt").write_text("".join(f"{text}\n" for text in lines))
    return root


@pytest.fixture
def kitti(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    frames = {}
    for i in range(10):
        lines = []
        for cls in ("Car", "Pedestrian", "Cyclist", "Van", "DontCare", "Car"):
            x1, y1 = rng.uniform(0, W - 40), rng.uniform(0, H - 40)
            lines.append(kitti_line(cls, (x1, y1, x1 + rng.uniform(3, 40), y1 + rng.uniform(3, 40))))
        frames[f"{i:06d}"] = lines
    frames["000003"].append(kitti_line("Car", (0, 0, W - 1, H)))  # touches the border, as KITTI boxes do
    return make_kitti(tmp_path / "kitti", frames)


def snapshot(root: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_kitti_to_yolo_and_back_keeps_the_boxes(kitti, tmp_path):
    before = snapshot(kitti)
    data = read_kitti(kitti)
    train, val = split_dataset(data, val_fraction=0.3, seed=1)
    yaml_path = write_yolo_dataset(train, val, tmp_path / "yolo")
    assert snapshot(kitti) == before  # the input is never touched
    assert (tmp_path / "yolo" / "images" / "train" / train[0].image_path.name).resolve() == train[
        0
    ].image_path.resolve()
    for split, original in (("train", train), ("val", val)):
        back = read_yolo_yaml(yaml_path, split)
        also = read_yolo_dir(tmp_path / "yolo", split=split)
        assert back.class_names == also.class_names == ["Car", "Pedestrian", "Cyclist"]
        assert len(back) == len(original)
        for a, b, c in zip(original, back, also):
            keep = ~a.ignore  # ignore boxes (Van, DontCare) are not written to YOLO labels
            np.testing.assert_allclose(b.boxes, a.boxes[keep], atol=1e-3 * W)
            np.testing.assert_array_equal(b.labels, a.labels[keep])
            np.testing.assert_array_equal(b.boxes, c.boxes)
    text = (tmp_path / "yolo" / "labels" / "train" / f"{train[0].image_id}.txt").read_text()
    values = np.array([row.split() for row in text.splitlines()], float)
    assert values.shape[1] == 5 and values[:, 1:].min() >= 0 and values[:, 1:].max() <= 1


def test_ultralytics_reads_the_written_dataset(kitti, tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = read_kitti(kitti)
    train, val = split_dataset(data, val_count=3)
    yaml_path = write_yolo_dataset(train, val, tmp_path / "yolo")
    info = check_det_dataset(str(yaml_path))
    assert info["names"] == {0: "Car", 1: "Pedestrian", 2: "Cyclist"}
    built = build_yolo_dataset(get_cfg(overrides={"imgsz": 128}), info["val"], 2, info, mode="val")
    expected = sum(s.num_objects for s in val)
    assert len(built.labels) == 3 and sum(len(lb["cls"]) for lb in built.labels) == expected


def test_coco_ground_truth_loads_and_ignore_boxes_excuse_detections(kitti, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = read_kitti(kitti)
    path = write_coco_json(data, tmp_path / "gt.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    assert sorted(gt.getImgIds()) == list(range(1, len(data) + 1))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["Car", "Pedestrian", "Cyclist"]
    anns = gt.loadAnns(gt.getAnnIds())
    crowd = [a for a in anns if a["iscrowd"]]
    objects = [a for a in anns if not a["iscrowd"]]
    assert len(objects) == sum(s.num_objects for s in data)
    # Each Van is one crowd box of Car; each DontCare one crowd box per category.
    assert len(crowd) == 10 * 1 + 10 * 3
    assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], rel=1e-3) for a in anns)

    # Perfect detections plus detections exactly on ignore boxes: AP stays 1 (ignored, not false positives).
    ids = coco_image_ids(data)
    detections = []
    for sample in data:
        for box, label in zip(sample.boxes, sample.labels):
            x1, y1, x2, y2 = box.tolist()
            for category in [label + 1] if label >= 0 else [1]:
                detections.append({"image_id": ids[sample.image_path], "category_id": int(category),
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.params.areaRng = [[0, 1e10]] * 4
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_split_is_deterministic_and_accepts_a_count():
    data = DetectionSet(["a"], [Sample(Path(f"{i:06d}.png"), 10, 10) for i in range(75)])
    train, val = split_dataset(data, val_count=15, seed=0)
    assert (len(train), len(val)) == (60, 15)
    assert {s.image_id for s in train}.isdisjoint({s.image_id for s in val})
    again = split_dataset(data, val_count=15, seed=0)[1]
    assert [s.image_id for s in again] == [s.image_id for s in val]
    assert [s.image_id for s in split_dataset(data, val_count=15, seed=1)[1]] != [s.image_id for s in val]
    assert [s.image_id for s in val] == sorted(s.image_id for s in val)  # dataset order kept
    assert len(split_dataset(data, val_fraction=0.2)[1]) == 15
    for bad in ({"val_fraction": 0.0}, {"val_fraction": 1.0}, {"val_count": 75}, {"val_count": 0}):
        with pytest.raises(BadInputError):
            split_dataset(data, **bad)


def test_yolo_output_is_replaced_whole(kitti, tmp_path):
    data = read_kitti(kitti)
    out = tmp_path / "yolo"
    write_yolo_dataset(*split_dataset(data, val_count=2), out)
    (out / "labels" / "train" / "stale.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    write_yolo_dataset(*split_dataset(data, val_count=4), out)
    assert not (out / "labels" / "train" / "stale.txt").exists()
    assert len(list((out / "images" / "val").iterdir())) == 4
    assert json.dumps(sorted(p.name for p in tmp_path.iterdir())) == json.dumps(["kitti", "yolo"])  # no temporaries
