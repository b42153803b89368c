"""Sources read right: COCO images without the chosen classes, class maps on YOLO sets, class
names matched by name, the user's own val split, evaluation-only sets, the rect letterbox and
bad inputs that are one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.cli import main
from detprune.data.batch import collate, rect_shape
from detprune.data.class_match import align_classes, class_order
from detprune.data.coco import read_coco
from detprune.data.convert import split_dataset, write_yolo_dataset
from detprune.data.kitti import read_kitti
from detprune.data.loader import load_dataset, load_eval_split, load_train_val, read_id_list
from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import BadInputError, DetpruneError
from detprune.evaluation.protocol import evaluate_detections


def _coco(root: Path, images, annotations, categories=None) -> Path:
    (root / "images").mkdir(parents=True)
    for entry in images:
        if isinstance(entry, dict):
            cv2.imwrite(str(root / "images" / entry["file_name"]), np.zeros((100, 200, 3), np.uint8))
    path = root / "instances_val.json"
    categories = categories or [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _image(i: int) -> dict:
    return {"id": i, "file_name": f"{i}.png", "width": 200, "height": 100}


def _ann(i: int, image_id: int, category: int, box) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category, "bbox": list(box), "iscrowd": 0}


# --- COCO: images without a chosen category are kept ---------------------------------------------


def test_coco_image_without_the_chosen_categories_is_kept_and_its_false_positive_counts(tmp_path):
    # image 1: one car; image 2: only a dog, i.e. no car
    path = _coco(tmp_path, [_image(1), _image(2)], [_ann(1, 1, 3, (20, 20, 40, 30)), _ann(2, 2, 18, (10, 10, 50, 50))])
    kept = read_coco(path, tmp_path / "images", ["car"])
    dropped = read_coco(path, tmp_path / "images", ["car"], keep_empty=False)
    assert [s.num_objects for s in kept] == [1, 0] and len(dropped) == 1
    hit = Detections([[20, 20, 60, 50]], [0.9], [0])  # the car, exactly
    false = Detections([[100, 20, 140, 50]], [0.95], [0])  # a "car" on the dog image, ranked first
    # Known answer: with image 2 the ranking is FP (0.95) then TP (0.9), so precision is 1/2
    # at every recall level up to 1 and the interpolated AP is 0.5 at every IoU threshold.
    # Without it the one detection is a hit: AP 1.0. The false positive was invisible there.
    with_empty = evaluate_detections(kept, [hit, false], kitti=False)
    without = evaluate_detections(dropped, [hit], kitti=False)
    assert with_empty["mAP50"] == pytest.approx(0.5, abs=1e-6) and with_empty["mAP"] == pytest.approx(0.5, abs=1e-6)
    assert without["mAP50"] == pytest.approx(1.0)


def test_coco_class_map_may_rename_and_merge_categories(tmp_path):
    path = _coco(tmp_path, [_image(1)], [_ann(1, 1, 3, (20, 20, 40, 30)), _ann(2, 1, 18, (100, 10, 50, 50))])
    data = load_dataset(path, class_map={"dog": "Animal", "car": "Car"})
    assert data.class_names == ["Animal", "Car"] and data[0].labels.tolist() == [1, 0]


# --- reader robustness -------------------------------------------------------------------------


def test_coco_category_without_name_and_string_images_are_one_line_errors(tmp_path):
    nameless = _coco(tmp_path / "a", [_image(1)], [], categories=[{"id": 3, "supercategory": "vehicle"}])
    with pytest.raises(BadInputError, match="category 3 has no 'name'") as err:
        read_coco(nameless, tmp_path / "a" / "images")
    assert "\n" not in str(err.value)
    strings = _coco(tmp_path / "b", ["1.png", "2.png"], [])
    with pytest.raises(BadInputError, match=r"image entry #0 \(str\) lacks id/file_name") as err:
        read_coco(strings, tmp_path / "b" / "images", ["car"])
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match="no images listed"):  # skipped, and then nothing is left
        read_coco(strings, tmp_path / "b" / "images", ["car"], skip_bad=True)


def test_binary_kitti_label_is_one_line_error_or_skipped_and_counted(synthetic_kitti, tmp_path, capsys):
    root = tmp_path / "kitti"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir()
    frames = sorted((synthetic_kitti / "label_2").glob("*.txt"))[:3]
    for label in frames:
        os.symlink(
            (synthetic_kitti / "image_2" / f"{label.stem}.png").resolve(), root / "image_2" / f"{label.stem}.png"
        )
        (root / "label_2" / label.name).write_text(label.read_text())
    (root / "label_2" / frames[1].name).write_bytes(bytes(range(256)) * 4)  # a binary file, not UTF-8
    with pytest.raises(BadInputError, match=f"{frames[1].name}: not a text label file"):
        read_kitti(root)
    data = read_kitti(root, skip_bad=True)
    assert len(data) == 2 and data.skipped == {"unreadable label file": 1}  # left out, not read as empty
    assert main(["data", "stats", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a text label file" in err and "Traceback" not in err
    assert main(["data", "stats", str(root), "--skip-bad"]) == 0
    assert "1 unreadable label file" in capsys.readouterr().out


# --- class maps on YOLO sets; one orphan-label rule --------------------------------------------


@pytest.fixture()
def yolo_set(synthetic_kitti, tmp_path) -> Path:
    train, val = split_dataset(load_dataset(synthetic_kitti), val_count=4)
    return write_yolo_dataset(train, val, tmp_path / "yolo")


def test_class_map_on_a_yolo_set_selects_renames_and_merges(yolo_set):
    plain = load_dataset(yolo_set, split="val")
    counts = {name: sum(int((s.labels == i).sum()) for s in plain) for i, name in enumerate(plain.class_names)}
    picked = load_dataset(yolo_set, split="val", class_map=["cyclist", "car"])  # by name, any case
    assert picked.class_names == ["cyclist", "car"]
    assert [sum(int((s.labels == i).sum()) for s in picked) for i in range(2)] == [counts["Cyclist"], counts["Car"]]
    merged = load_dataset(
        yolo_set, split="val", class_map={"Car": "vehicle", "Cyclist": "vehicle", "Pedestrian": "person"}
    )
    assert merged.class_names == ["vehicle", "person"]
    assert sum(int((s.labels == 0).sum()) for s in merged) == counts["Car"] + counts["Cyclist"]
    with pytest.raises(BadInputError, match="class map names Truck, not classes of"):
        load_dataset(yolo_set, split="val", class_map=["Truck"])


def test_label_without_image_is_flagged_for_the_folder_and_its_yaml_alike(yolo_set):
    (yolo_set.parent / "labels" / "val" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    for spec in (yolo_set.parent, yolo_set):
        with pytest.raises(BadInputError, match="orphan.txt: no image for this label file"):
            load_dataset(spec, split="val")
        assert load_dataset(spec, split="val", skip_bad=True).skipped == {"label without image": 1}


# --- class names matched by name -------------------------------------------------------------------


def test_class_names_that_differ_are_an_error_naming_both_lists():
    with pytest.raises(DetpruneError, match=r"model's classes \(Car, Pedestrian, Cyclist\) are not the data's "
                                            r"\(person, bicycle, car\)") as err:
        class_order(["Car", "Pedestrian", "Cyclist"], ["person", "bicycle", "car"])
    assert "\n" not in str(err.value)
    assert class_order(["Car", "Pedestrian"], ["car", "PEDESTRIAN"]) is None  # case does not matter
    assert class_order(["Car", "Pedestrian", "Cyclist"], ["Cyclist", "Car", "Pedestrian"]) == [2, 0, 1]


def _scene(tmp_path: Path, names: list[str], car: int, person: int) -> DetectionSet:
    """Two images with a car and a pedestrian each, labelled ``car`` / ``person`` in ``names``' numbering."""
    samples = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        samples.append(Sample(path, 200, 100, [[10, 10, 50, 40], [100, 20, 120, 80]], [car, person]))
    return DetectionSet(names, samples)


def test_remapped_class_order_gives_the_matched_order_s_ap(tmp_path):
    model_names = ["Car", "Pedestrian"]
    # Predictions in the model's numbering (0 Car, 1 Pedestrian): image 0 right, image 1 with
    # the classes swapped and a stray box, so AP is neither 0 nor 1 and differs per class.
    predictions = [
        Detections([[10, 10, 50, 40], [100, 20, 120, 80]], [0.9, 0.8], [0, 1]),
        Detections([[10, 10, 50, 40], [100, 20, 120, 80], [150, 5, 190, 40]], [0.7, 0.6, 0.95], [1, 0, 0]),
    ]
    matched = _scene(tmp_path, model_names, car=0, person=1)
    reordered = _scene(tmp_path, ["pedestrian", "car"], car=1, person=0)  # the same data, numbered the other way
    expected = evaluate_detections(matched, predictions, kitti=False)
    remapped = evaluate_detections(align_classes(reordered, model_names, notify=None), predictions, kitti=False)
    assert 0 < expected["mAP50"] < 1
    assert remapped["mAP50"] == pytest.approx(expected["mAP50"]) and remapped["mAP"] == pytest.approx(expected["mAP"])
    assert [remapped["per_class_AP"][n.lower()] for n in ("pedestrian", "car")] == \
        pytest.approx([expected["per_class_AP"][n] for n in ("Pedestrian", "Car")])
    by_index = evaluate_detections(reordered, predictions, kitti=False)  # what matching by index gave
    assert by_index["mAP50"] != pytest.approx(expected["mAP50"])
    assert reordered.samples[0].labels.tolist() == [1, 0]  # the input is not modified


# --- the user's val split, evaluation-only sets ----------------------------------------------------


def test_val_list_picks_exactly_those_frames_and_rejects_an_unknown_id(synthetic_kitti, tmp_path):
    ids = sorted(p.stem for p in (synthetic_kitti / "label_2").glob("*.txt"))
    listing = tmp_path / "val.txt"
    listing.write_text(f"# our val frames\n{ids[3]}\n\n{ids[7]}  # a comment\n{ids[0]}\n")
    assert read_id_list(listing) == [ids[3], ids[7], ids[0]]
    train, val = load_train_val(synthetic_kitti, val_list=listing)
    assert [s.image_id for s in val] == [ids[0], ids[3], ids[7]]  # in dataset order
    assert len(train) == len(ids) - 3 and not {s.image_id for s in train} & {s.image_id for s in val}
    assert [s.image_id for s in load_eval_split(synthetic_kitti, "val", val_list=listing)] == [ids[0], ids[3], ids[7]]
    listing.write_text(f"{ids[1]}\n999999\n")
    with pytest.raises(BadInputError, match=r"frame id '999999' is not in dataset") as err:
        load_train_val(synthetic_kitti, val_list=listing)
    assert "\n" not in str(err.value)
    with pytest.raises(BadInputError, match="not both"):
        load_train_val(synthetic_kitti, val_list=listing, val_count=2)


def test_convert_writes_an_evaluation_only_set_ultralytics_validates(synthetic_kitti, tmp_path, capsys):
    from ultralytics.data.utils import check_det_dataset

    count = len(list((synthetic_kitti / "label_2").glob("*.txt")))
    assert main(["data", "convert", str(synthetic_kitti), "--to", "yolo", "--out", str(tmp_path / "all"),
                 "--val-count", str(count)]) == 0
    assert "evaluation-only" in capsys.readouterr().out
    listing = tmp_path / "every.txt"
    listing.write_text("\n".join(p.stem for p in (synthetic_kitti / "label_2").glob("*.txt")))
    assert main(["data", "convert", str(synthetic_kitti), "--to", "yolo", "--out", str(tmp_path / "listed"),
                 "--val-list", str(listing)]) == 0
    for out in ("all", "listed"):
        yaml_path = tmp_path / out / "data.yaml"
        assert not any((tmp_path / out / "images" / "train").iterdir())
        assert len(list((tmp_path / out / "images" / "val").iterdir())) == count
        info = check_det_dataset(str(yaml_path))  # what ultralytics' validator reads first
        assert info["nc"] == 3 and Path(info["val"]).is_dir()
        assert len(load_eval_split(yaml_path, "val")) == count
    # without an explicit request the old rule stands: a training split needs an image
    with pytest.raises(BadInputError, match="both splits need at least one image"):
        split_dataset(load_dataset(synthetic_kitti), val_count=count)


# --- rect letterbox ----------------------------------------------------------------------------


def test_rect_letterbox_of_a_kitti_frame(tmp_path):
    # ultralytics' val rect for one 1242x375 frame at 640, stride 32: h/w = 375/1242 = 0.3019;
    # height ceil(0.3019 * 640 / 32 + 0.5) * 32 = ceil(6.54) * 32 = 224, width
    # ceil(640 / 32 + 0.5) * 32 = 21 * 32 = 672. The frame itself is resized to 640x194 (see test_eval_options).
    assert rect_shape([(375, 1242)], 640) == (224, 672)
    assert rect_shape([(375, 1242), (370, 1224)], 640) == (224, 672)
    assert rect_shape([(1242, 375)], 640) == (672, 224)  # portrait: the same, turned
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), np.full((375, 1242, 3), 200, np.uint8))
    sample = Sample(path, 1242, 375, [[100, 50, 300, 200]], [0])
    batch = collate([sample], 640, rect=True)
    assert tuple(batch.images.shape) == (1, 3, 224, 672)
    square = collate([sample], 640)
    assert tuple(square.images.shape) == (1, 3, 640, 640)
    lb = batch.letterboxes[0]
    assert lb.scale == pytest.approx(640 / 1242) and (lb.pad_x, lb.pad_y) == (16.0, 15.0)
    np.testing.assert_allclose(lb.to_original(lb.to_input(sample.boxes)), sample.boxes, atol=1e-3)
