"""COCO ``instances_*.json`` filtered to a set of categories (COCO_traffic by default).

Crowd annotations (``iscrowd: 1``) of a kept category become ignore boxes with that
category's label, as COCO's own evaluation treats them. Images with no kept box are left out
unless ``keep_empty``, because COCO_traffic is about the frames that show traffic.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from detprune.data import validation as v
from detprune.data.classmaps import COCO_TRAFFIC
from detprune.data.types import DetectionSet, Sample
from detprune.errors import BadInputError


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
    categories: Sequence[str] | None = COCO_TRAFFIC,
    keep_empty: bool = False,
    skip_bad: bool = False,
) -> DetectionSet:
    """Read the boxes of ``categories`` (names, in the order that numbers them; None = all)."""
    path, images_dir = Path(annotations_json), Path(images_dir)
    data = load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadInputError(f"{path}: missing the '{key}' list of a COCO instances file")
    if not images_dir.is_dir():
        raise BadInputError(f"{images_dir}: images folder not found")

    by_name = {c["name"]: c["id"] for c in data["categories"]}
    if categories is None:
        categories = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    missing = [name for name in categories if name not in by_name]
    if missing:
        raise BadInputError(f"{path}: categories not in this file: {', '.join(missing)}")
    label_of = {by_name[name]: i for i, name in enumerate(categories)}
    known_ids = set(by_name.values())

    problems = v.BadInputs(path, skip_bad)
    images = {}
    for image in data["images"]:
        try:
            images[image["id"]] = (str(image["file_name"]), int(image["width"]), int(image["height"]))
        except (KeyError, TypeError, ValueError):
            problems.report(v.MALFORMED_LINE, f"{path}: image entry {image.get('id', '?')} lacks id/file_name/width/height")
    if not images:
        raise BadInputError(f"{path}: no images listed; is this an empty annotation file?")

    per_image: dict[int, list[tuple[tuple, int, bool]]] = defaultdict(list)
    for ann in data["annotations"]:
        _read_annotation(ann, path, images, known_ids, label_of, per_image, problems)

    samples = []
    for image_id in sorted(images):
        entries = per_image.get(image_id, [])
        if not entries and not keep_empty:
            continue
        file_name, width, height = images[image_id]
        image_path = images_dir / file_name
        if not image_path.is_file():
            problems.report(v.LABEL_WITHOUT_IMAGE, f"{path}: image id {image_id} ({file_name}) not found in {images_dir}")
            continue
        boxes = np.array([e[0] for e in entries], np.float32).reshape(-1, 4)
        samples.append(Sample(image_path, width, height, boxes, [e[1] for e in entries], [e[2] for e in entries]))
    if not samples:
        raise BadInputError(f"{path}: no image with a box of {', '.join(categories)} ({problems.summary() or 'none skipped'})")
    return DetectionSet(list(categories), samples, name=path.stem, skipped=problems.log_summary())


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
