"""load_dataset recognises each source; YOLO folders and yamls; dataset yamls and their splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detprune.data.convert import split_dataset, write_coco_dataset, write_yolo_dataset
from detprune.data.loader import has_splits, load_dataset, load_train_val
from detprune.errors import BadInputError

REPO = Path(__file__).resolve().parents[3]
W, H = 160, 80


def make_kitti(root: Path, n: int = 8) -> Path:
    (root / "training" / "image_2").mkdir(parents=True)
    (root / "training" / "label_2").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "training" / "image_2" / f"{i:06d}.png"), np.full((H, W, 3), 60, np.uint8))
        lines = [f"{cls} 0.00 0 0.00 {10 + i}.00 10.00 {40 + i}.00 50.00 1.5 1.6 4.0 1.0 1.65 20.0 0.0"
                 for cls in ("Car", "Pedestrian", "DontCare")]
        (root / "training" / "label_2" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def kitti(tmp_path) -> Path:
    return make_kitti(tmp_path / "kitti")


def ids(dataset) -> list[str]:
    return [s.image_id for s in dataset]


def test_kitti_folder_with_and_without_split_lists(kitti):
    data = load_dataset(kitti)
    assert len(data) == 8 and data.class_names == ["Car", "Pedestrian", "Cyclist"]
    assert load_dataset(kitti, class_map="kitti3-merged").class_names[0] == "car"
    assert not has_splits(kitti)
    with pytest.raises(BadInputError, match="no split list .*ImageSets/val.txt"):
        load_dataset(kitti, split="val")
    (kitti / "ImageSets").mkdir()
    (kitti / "ImageSets" / "train.txt").write_text("000000\n000001\n000002\n")
    (kitti / "ImageSets" / "val.txt").write_text("000005\n000007\n")
    assert ids(load_dataset(kitti, split="val")) == ["000005", "000007"]
    assert has_splits(kitti)
    train, val = load_train_val(kitti)
    assert (len(train), len(val)) == (3, 2)
    train, val = load_train_val(kitti, val_count=3, seed=4)  # an explicit split overrides the lists
    assert (len(train), len(val)) == (5, 3)


def test_yolo_yaml_folder_and_flat_dir(kitti, tmp_path):
    train, val = split_dataset(load_dataset(kitti), val_count=3)
    yaml_path = write_yolo_dataset(train, val, tmp_path / "yolo")
    assert ids(load_dataset(yaml_path, split="val")) == ids(val)
    assert ids(load_dataset(tmp_path / "yolo", split="train")) == ids(train)  # the folder holding data.yaml
    for spec in (yaml_path, tmp_path / "yolo"):
        with pytest.raises(BadInputError, match="has splits train, val; choose one"):
            load_dataset(spec)
    with pytest.raises(BadInputError, match="class map 'kitti8' names KITTI or COCO classes; a YOLO set takes a list"):
        load_dataset(yaml_path, split="val", class_map="kitti8")
    assert [len(s) for s in load_train_val(yaml_path)] == [5, 3]
    # A flat folder with classes.txt, written by hand.
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "labels").mkdir()
    cv2.imwrite(str(flat / "images" / "a.jpg"), np.zeros((50, 100, 3), np.uint8))
    cv2.imwrite(str(flat / "images" / "b.jpg"), np.zeros((50, 100, 3), np.uint8))  # no label file: background
    (flat / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (flat / "classes.txt").write_text("car\nperson\n")
    data = load_dataset(flat)
    assert data.class_names == ["car", "person"] and len(data) == 2
    np.testing.assert_allclose(data[0].boxes, [[40, 15, 60, 35]], atol=1e-4)
    assert len(data[1].boxes) == 0


@pytest.mark.parametrize(
    "text, fragment, kind",
    [
        ("0 0.5 0.5 0.2", "a.txt:1: expected 5 fields (cls cx cy w h), got 4", "malformed line"),
        ("0 0.5 0.5 0.2 x", "a.txt:1: not all of", "malformed line"),
        ("2 0.5 0.5 0.2 0.2", "a.txt:1: class id 2 is not one of 0..1", "unknown class"),
        ("0 0.5 0.5 0.0 0.2", "a.txt:1: degenerate box", "degenerate box"),
        ("0 0.95 0.5 0.3 0.2", "a.txt:1: box", "out-of-image box"),
    ],
)
def test_yolo_bad_lines(tmp_path, text, fragment, kind):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((50, 100, 3), np.uint8))
    (root / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.1 0.1\n{text}\n".replace("a.txt:1", "a.txt:2"))
    (root / "classes.txt").write_text("car\nperson\n")
    with pytest.raises(BadInputError) as err:
        load_dataset(root)
    assert fragment.replace(":1:", ":2:") in str(err.value)
    assert load_dataset(root, skip_bad=True).skipped == {kind: 1}


def test_yolo_label_without_image(tmp_path):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((50, 100, 3), np.uint8))
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(BadInputError, match="orphan.txt: no image for this label file"):
        load_dataset(root)
    assert load_dataset(root, skip_bad=True).skipped == {"label without image": 1}


def test_coco_json_and_coco_folder(kitti, tmp_path):
    train, val = split_dataset(load_dataset(kitti), val_count=2)
    annotations = write_coco_dataset({"train": train, "val": val}, tmp_path / "coco")
    names = ["Car", "Pedestrian", "Cyclist"]
    back = load_dataset(annotations / "instances_val.json", class_map=names)  # images found in ../val
    assert ids(back) == ids(val) and back.class_names == names
    assert [s.num_objects for s in back] == [s.num_objects for s in val]
    assert ids(load_dataset(tmp_path / "coco", split="train", class_map=names)) == ids(train)
    with pytest.raises(BadInputError, match="has splits train, val"):
        load_dataset(tmp_path / "coco", class_map=names)
    with pytest.raises(BadInputError, match="categories not in this file: person"):
        load_dataset(annotations / "instances_val.json")  # COCO_traffic by default


def test_dataset_yamls(kitti, tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text(
        yaml.safe_dump({"format": "synthetic", "path": "kitti", "class_map": "kitti8", "val_count": 3, "seed": 2})
    )
    whole = load_dataset(spec)
    assert len(whole) == 8 and len(whole.class_names) == 8
    val = load_dataset(spec, split="val")
    assert len(val) == 3 and ids(val) == ids(split_dataset(whole, val_count=3, seed=2)[1])
    train, val2 = load_train_val(spec)
    assert ids(val2) == ids(val) and len(train) == 5
    with pytest.raises(BadInputError, match="no split 'test'"):
        load_dataset(spec, split="test")
    listed = tmp_path / "listed.yaml"
    (kitti / "ImageSets").mkdir()
    (kitti / "ImageSets" / "val.txt").write_text("000001\n")
    listed.write_text(
        yaml.safe_dump(
            {
                "format": "kitti",
                "path": str(kitti),
                "splits": {"val": "ImageSets/val.txt", "train": "ImageSets/train.txt"},
            }
        )
    )
    assert ids(load_dataset(listed, split="val")) == ["000001"]
    with pytest.raises(BadInputError, match="train.txt: split list not found"):
        load_dataset(listed, split="train")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"format": "kitti", "path": "nowhere", "prepare": "detprune data synth nowhere"}))
    with pytest.raises(BadInputError, match="not found; make it with: detprune data synth nowhere"):
        load_dataset(missing)


@pytest.mark.parametrize("name", ["kitti.yaml", "coco-traffic.yaml", "synthetic.yaml"])
def test_shipped_dataset_yamls_parse_and_explain_what_is_missing(name):
    spec = REPO / "datasets" / name
    data = yaml.safe_load(spec.read_text())
    assert data["format"] in {"kitti", "coco", "synthetic"}
    if (spec.parent / data["path"]).exists():
        pytest.skip(f"{name}: the dataset is prepared here; nothing to explain")
    with pytest.raises(BadInputError, match="not found"):
        load_dataset(spec, split="val")


def test_anything_else_is_a_one_line_error(tmp_path):
    with pytest.raises(BadInputError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInputError, match="not a dataset; expected a KITTI folder") as err:
        load_dataset(tmp_path / "notes.txt")
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match="not a dataset"):
        load_dataset(tmp_path)
