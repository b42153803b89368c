"""COCO ``instances_*.json`` filtered to a set of categories (COCO_traffic by default).

Crowd annotations (``iscrowd: 1``) of a kept category become ignore boxes with that
category's label, as COCO's own evaluation treats them. Images with no box of the chosen
categories stay, as images without objects: a detection on them is a false positive, and
leaving them out would hide it (``keep_empty=False`` drops them, e.g. to train on traffic
frames only).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from detprune.data import validation as v
from detprune.data.classmaps import COCO_TRAFFIC
from detprune.data.types import DetectionSet, Sample
from detprune.errors import BadInputError
from detprune.utils.numbers import whole_number


def load_json(path: Path) -> dict:
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a text file") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a COCO object with images, annotations, categories")
    return data


def is_coco_json(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix == ".json"


def read_coco(
    annotations_json: str | Path,
    images_dir: str | Path,
    categories: Sequence[str] | Mapping[str, str | None] | None = COCO_TRAFFIC,
    keep_empty: bool = True,
    skip_bad: bool = False,
) -> DetectionSet:
    """Read the boxes of ``categories``: names in the order that numbers them (None = all), or a
    mapping category name -> class name (several may merge into one class; None drops one)."""
    path, images_dir = Path(annotations_json), Path(images_dir)
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadInputError(f"{path}: missing the '{key}' list of a COCO instances file")
    if not images_dir.is_dir():
        raise BadInputError(f"{images_dir}: images folder not found")

    by_name = _category_ids(data["categories"], path)
    if categories is None:
        categories = list(by_name)
    targets = dict(categories) if isinstance(categories, Mapping) else {name: name for name in categories}
    missing = [name for name in targets if name not in by_name]
    if missing:
        raise BadInputError(f"{path}: categories not in this file: {', '.join(missing)}")
    class_names = list(dict.fromkeys(t for t in targets.values() if t is not None))
    if not class_names:
        raise BadInputError(f"{path}: the class map keeps no category")
    label_of = {by_name[name]: class_names.index(t) for name, t in targets.items() if t is not None}
    known_ids = set(by_name.values())

    problems = v.BadInputs(path, skip_bad)
    images = {}
    for number, image in enumerate(data["images"]):
        try:
            images[image["id"]] = (str(image["file_name"]), whole_number(image["width"], "width", low=1),
                                   whole_number(image["height"], "height", low=1))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, BadInputError):
            name = image.get("id", "?") if isinstance(image, dict) else f"#{number} ({type(image).__name__})"
            problems.report(v.MALFORMED_LINE, f"{path}: image entry {name} lacks id/file_name or a positive whole "
                                              "width/height")
    if not images:
        raise BadInputError(f"{path}: no images listed; is this an empty annotation file?")

    per_image: dict[int, list[tuple[tuple, int, bool]]] = defaultdict(list)
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.report(v.MALFORMED_LINE, f"{path}: annotation #{number} is a {type(ann).__name__}, not an object")
            continue
        _read_annotation(ann, path, images, known_ids, label_of, per_image, problems)

    samples = []
    try:
        order = sorted(images)
    except TypeError:  # ids of mixed types (numbers and strings)
        order = sorted(images, key=str)
    for image_id in order:
        entries = per_image.get(image_id, [])
        if not entries and not keep_empty:
            continue
        file_name, width, height = images[image_id]
        image_path = images_dir / file_name
        if not image_path.is_file():
            problems.report(
                v.LABEL_WITHOUT_IMAGE, f"{path}: image id {image_id} ({file_name}) not found in {images_dir}"
            )
            continue
        boxes = np.array([e[0] for e in entries], np.float32).reshape(-1, 4)
        samples.append(Sample(image_path, width, height, boxes, [e[1] for e in entries], [e[2] for e in entries]))
    if not samples:
        raise BadInputError(
            f"{path}: no image with a box of {', '.join(targets)} ({problems.summary() or 'none skipped'})"
        )
    return DetectionSet(class_names, samples, name=path.stem, skipped=problems.log_summary())


def _category_ids(categories: list, path: Path) -> dict[str, int]:
    """Category name -> id, in id order; a category without a name or id is a one-line error."""
    found = []
    for number, category in enumerate(categories):
        if not isinstance(category, dict) or "name" not in category or "id" not in category:
            what = (
                category.get("id", f"#{number}")
                if isinstance(category, dict)
                else f"#{number} ({type(category).__name__})"
            )
            raise BadInputError(f"{path}: category {what} has no 'name' and 'id'; every COCO category needs both")
        found.append((category["id"], str(category["name"])))
    try:
        found.sort(key=lambda c: c[0])
    except TypeError:
        raise BadInputError(f"{path}: category ids are not all numbers") from None
    return {name: cid for cid, name in found}


def _read_annotation(ann: dict, path: Path, images, known_ids, label_of, per_image, problems: v.BadInputs) -> None:
    place = f"{path}: annotation {ann.get('id', '?')}"
    category = ann.get("category_id")
    if category not in known_ids:
        problems.report(v.UNKNOWN_CLASS, f"{place}: category_id {category!r} is not in the categories list")
        return
    if category not in label_of:
        return  # a category outside the chosen set
    image_id = ann.get("image_id")
    if image_id not in images:
        problems.report(v.LABEL_WITHOUT_IMAGE, f"{place}: image_id {image_id!r} is not in the images list")
        return
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(c) for c in bbox)
    except (TypeError, ValueError):
        problems.report(v.MALFORMED_LINE, f"{place}: bbox {bbox!r} is not [x, y, width, height]")
        return
    box = (x, y, x + w, y + h)
    _, width, height = images[image_id]
    if v.check_box(problems, place, box, width, height):
        per_image[image_id].append((box, label_of[category], bool(ann.get("iscrowd", 0))))
