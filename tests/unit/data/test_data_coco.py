"""COCO instances reading: the traffic categories, crowd as ignore, empty images, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.data.classmaps import COCO_TRAFFIC
from detprune.data.coco import read_coco
from detprune.errors import BadInputError

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 2, "name": "bicycle"},
    {"id": 3, "name": "car"},
    {"id": 4, "name": "motorcycle"},
    {"id": 6, "name": "bus"},
    {"id": 8, "name": "truck"},
    {"id": 10, "name": "traffic light"},
    {"id": 13, "name": "stop sign"},
    {"id": 18, "name": "dog"},
]


def make_coco(root: Path, annotations: list[dict], images: int = 3) -> Path:
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    entries = []
    for i in range(1, images + 1):
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / "val2017" / name), np.zeros((80, 160, 3), np.uint8))
        entries.append({"id": i, "file_name": name, "width": 160, "height": 80})
    for n, ann in enumerate(annotations, start=1):
        ann.setdefault("id", n)
        ann.setdefault("iscrowd", 0)
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": CATEGORIES}))
    return path


def ann(image_id: int, category_id: int, bbox, **extra) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), **extra}


def test_traffic_categories_crowd_and_empty_images(tmp_path):
    path = make_coco(tmp_path, [
        ann(1, 3, (10, 10, 30, 20)),
        ann(1, 1, (50, 5, 10, 40), iscrowd=1),
        ann(1, 13, (100, 10, 8, 8)),
        ann(2, 18, (5, 5, 40, 40)),  # a dog: not a traffic category
    ])
    data = read_coco(path, tmp_path / "val2017", keep_empty=False)
    assert data.class_names == list(COCO_TRAFFIC)
    assert len(data) == 1  # image 2 has only a dog, image 3 nothing
    sample = data[0]
    assert sample.labels.tolist() == [2, 0, 7]
    assert sample.ignore.tolist() == [False, True, False]
    np.testing.assert_allclose(sample.boxes[0], [10, 10, 40, 30])
    assert (sample.width, sample.height) == (160, 80)
    kept = read_coco(path, tmp_path / "val2017")  # the default keeps images without a chosen box
    assert len(kept) == 3 and [s.num_objects for s in kept] == [2, 0, 0]
    mine = read_coco(path, tmp_path / "val2017", categories=["dog", "car"], keep_empty=False)
    assert mine.class_names == ["dog", "car"] and len(mine) == 2
    assert len(read_coco(path, tmp_path / "val2017", categories=None).class_names) == len(CATEGORIES)


@pytest.mark.parametrize(
    "bad, fragment, kind",
    [
        (ann(1, 99, (1, 1, 5, 5)), "category_id 99 is not in the categories list", "unknown class"),
        (ann(1, 3, (10, 10, 0, 5)), "degenerate box", "degenerate box"),
        (ann(1, 3, (150, 10, 40, 5)), "lies outside the 160x80 image", "out-of-image box"),
        (ann(7, 3, (1, 1, 5, 5)), "image_id 7 is not in the images list", "label without image"),
        (ann(1, 3, "10 10 5 5"), "is not [x, y, width, height]", "malformed line"),
    ],
)
def test_bad_annotations_name_the_file_and_annotation(tmp_path, bad, fragment, kind):
    path = make_coco(tmp_path, [ann(1, 3, (10, 10, 30, 20)), bad])
    with pytest.raises(BadInputError) as err:
        read_coco(path, tmp_path / "val2017")
    assert fragment in str(err.value) and "instances_val2017.json: annotation 2" in str(err.value)
    data = read_coco(path, tmp_path / "val2017", skip_bad=True)
    assert data.skipped == {kind: 1} and len(data[0].boxes) == 1


def test_missing_image_broken_json_and_missing_category(tmp_path):
    path = make_coco(tmp_path, [ann(1, 3, (10, 10, 30, 20)), ann(2, 3, (10, 10, 30, 20))])
    (tmp_path / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(BadInputError, match=r"image id 2 \(000000000002.jpg\) not found"):
        read_coco(path, tmp_path / "val2017")
    assert read_coco(path, tmp_path / "val2017", skip_bad=True).skipped == {"label without image": 1}
    with pytest.raises(BadInputError, match="categories not in this file: zebra"):
        read_coco(path, tmp_path / "val2017", categories=["car", "zebra"])
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(BadInputError, match=r"broken.json:2: not valid JSON"):
        read_coco(broken, tmp_path / "val2017")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    with pytest.raises(BadInputError, match="no images listed"):
        read_coco(empty, tmp_path / "val2017")
