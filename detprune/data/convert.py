"""Writers for the formats the rest of the field reads, and a deterministic train/val split.

- :func:`write_yolo_dataset`: the folder and data yaml the ultralytics trainer reads.
- :func:`write_coco_json`: ground truth that ``pycocotools.coco.COCO`` loads.
- :func:`split_dataset`: the same split for the same seed, on any machine.

Inputs are never modified (images are linked or copied) and every output is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from detprune.data.types import DetectionSet
from detprune.data.yolo_format import place_image, write_yolo_split
from detprune.errors import BadInputError
from detprune.utils.atomic import atomic_dir, atomic_path

DATA_YAML = "data.yaml"


def split_dataset(
    dataset: DetectionSet,
    val_fraction: float = 0.2,
    seed: int = 0,
    *,
    val_count: int | None = None,
    allow_empty_train: bool = False,
) -> tuple[DetectionSet, DetectionSet]:
    """(train, val), chosen by a seeded permutation; each keeps the dataset's order.

    ``val_count`` (e.g. 15 of kitti_tiny's 75 frames) overrides ``val_fraction``.
    ``allow_empty_train`` lets ``val_count`` take every image (an evaluation-only set).
    """
    n = len(dataset)
    if val_count is None:
        if not 0.0 < val_fraction < 1.0:
            raise BadInputError(f"val fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        val_count = int(round(n * val_fraction))
        val_count = min(max(val_count, 1), n - 1)
    top = n if allow_empty_train else n - 1
    if not 0 < val_count <= top:
        if val_count > n:
            need = f"the dataset has only {n}"
        else:
            need = "val needs at least one image" if allow_empty_train else "both splits need at least one image"
        raise BadInputError(f"cannot put {val_count} of {n} images in val: {need}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:val_count].tolist())
    train = dataset.subset([i for i in range(n) if i not in val_idx])
    val = dataset.subset(sorted(val_idx))
    return train, val


def split_by_ids(
    dataset: DetectionSet, ids: Sequence[str], *, source: str = "--val-list", allow_empty_train: bool = False
) -> tuple[DetectionSet, DetectionSet]:
    """(train, val) with val the images whose id (file stem, a KITTI frame id) is in ``ids``.

    An id the dataset lacks is an error naming it, so a typo never shrinks the evaluation.
    """
    index = {sample.image_id: i for i, sample in enumerate(dataset)}
    unknown = [i for i in ids if i not in index]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise BadInputError(
            f"{source}: frame id {unknown[0]!r}{more} is not in dataset '{dataset.name}' ({len(dataset)} images)"
        )
    chosen = set(index[i] for i in ids)
    if not chosen:
        raise BadInputError(f"{source}: lists no frame id")
    if len(chosen) == len(dataset) and not allow_empty_train:
        raise BadInputError(f"{source}: lists all {len(dataset)} images, leaving none to train on")
    train = dataset.subset([i for i in range(len(dataset)) if i not in chosen])
    return train, dataset.subset(sorted(chosen))


def yolo_data_yaml(root: Path, class_names: list[str]) -> str:
    """The data yaml for a folder written by :func:`write_yolo_dataset`."""
    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {i: name for i, name in enumerate(class_names)},
    }
    return yaml.safe_dump(data, sort_keys=False)


def write_yolo_dataset(
    train: DetectionSet, val: DetectionSet, out_dir: str | Path, *, link: bool = True
) -> Path:
    """Write ``out_dir/{images,labels}/{train,val}`` and ``out_dir/data.yaml``; return the yaml.

    Images are symlinked (copied where links are impossible, or with ``link=False``). Ignore
    boxes are not written: the YOLO format has no ignore regions. An existing ``out_dir`` is
    replaced as a whole, only once the new one is complete. An empty ``train`` gives an
    evaluation-only set: ``images/train`` is an empty folder, which ultralytics' validator
    accepts (it reads only ``val``; the yaml still needs a ``train`` entry).
    """
    if list(train.class_names) != list(val.class_names):
        raise BadInputError(f"train and val class names differ: {train.class_names} vs {val.class_names}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        write_yolo_split(train, tmp, "train", link)
        write_yolo_split(val, tmp, "val", link)
        (tmp / DATA_YAML).write_text(yolo_data_yaml(out_dir, list(train.class_names)))
    return out_dir / DATA_YAML


def coco_image_ids(dataset: DetectionSet) -> dict[Path, int]:
    """Image path -> the COCO image id :func:`write_coco_json` gives it (1-based, dataset order).

    Evaluation writes its detections with these ids so that they match the ground truth.
    """
    return {sample.image_path: i + 1 for i, sample in enumerate(dataset)}


def coco_ground_truth(dataset: DetectionSet, file_names: dict[Path, str] | None = None) -> dict:
    """The COCO dict of ``dataset``: categories 1..K, boxes xywh, ignore boxes as crowd.

    A class-less ignore region (KITTI DontCare) becomes one crowd box per category, because a
    COCO crowd box only excuses detections of its own category.
    """
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(dataset.class_names)]
    images, annotations = [], []
    for sample, image_id in zip(dataset, coco_image_ids(dataset).values()):
        name = (file_names or {}).get(sample.image_path, sample.image_path.name)
        images.append({"id": image_id, "file_name": name, "width": sample.width, "height": sample.height})
        for box, label, ignore in zip(sample.boxes.tolist(), sample.labels.tolist(), sample.ignore.tolist()):
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            for category in range(1, len(categories) + 1) if label < 0 else [label + 1]:
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                    "area": round(w * h, 3),
                    "iscrowd": int(bool(ignore)),
                })
    return {
        "info": {"description": f"{dataset.name} ground truth written by detprune"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco_json(dataset: DetectionSet, path: str | Path, file_names: dict[Path, str] | None = None) -> Path:
    """Write ``dataset`` as COCO ground truth (see :func:`coco_ground_truth`) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(coco_ground_truth(dataset, file_names)))
    return path


def write_coco_dataset(splits: dict[str, DetectionSet], out_dir: str | Path, *, link: bool = True) -> Path:
    """COCO's layout: ``out_dir/annotations/instances_<split>.json`` and ``out_dir/<split>/`` images."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for split, dataset in splits.items():
            (tmp / split).mkdir()
            names: dict[Path, str] = {}
            taken: set[str] = set()
            for sample in dataset:
                name = sample.image_path.name
                if name in taken:
                    raise BadInputError(
                        f"{sample.image_path}: same file name as another image in split '{split}'; rename one"
                    )
                taken.add(name)
                names[sample.image_path] = name
                place_image(sample.image_path, tmp / split / name, link)
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_ground_truth(dataset, names)))
    return out_dir / "annotations"
