"""One entry point that recognises what a dataset path is and reads it.

Recognised, in this order:

- a KITTI folder: ``image_2/`` and ``label_2/``, directly or under ``training/``
  (a synthetic set is one); ``split`` picks ``ImageSets/<split>.txt`` beside ``training/``;
- a detprune dataset yaml (has ``format:``, see ``datasets/*.yaml``);
- an ultralytics data yaml (``path``, ``train``, ``val``, ``names``), or a folder holding
  ``data.yaml``;
- a YOLO folder: ``images/`` and ``labels/``, flat or with split folders;
- a COCO json, with its images in ``images/`` beside it or in ``<split>/`` beside its
  ``annotations/`` folder (COCO's own layout), or a folder with ``annotations/instances_*.json``.

``split=None`` means the whole set where the set is one folder, and is an error (naming the
splits) where the splits are separate folders or files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from detprune.data.classmaps import COCO_TRAFFIC
from detprune.data.coco import read_coco
from detprune.data.convert import split_by_ids, split_dataset
from detprune.data.kitti import find_kitti_dirs, read_frame_ids, read_kitti
from detprune.data.types import DetectionSet
from detprune.defaults import EVAL_SPLITS
from detprune.data.yolo_format import (
    is_yolo_dir, load_yaml, read_yolo_dir, read_yolo_yaml, remap_classes, resolve_root, yolo_splits,
)
from detprune.errors import BadInputError
from detprune.utils.numbers import real_number, whole_number

YAML_SUFFIXES = (".yaml", ".yml")
COCO_CATEGORY_SETS = {"coco-traffic": COCO_TRAFFIC, "coco-all": None}


def load_dataset(
    spec: str | Path,
    *,
    class_map=None,
    skip_bad: bool = False,
    split: str | None = None,
) -> DetectionSet:
    """Read whatever ``spec`` names as a :class:`DetectionSet` (see the module docstring).

    ``class_map`` applies to KITTI (a name, dict or ClassMap; default ``kitti3``), COCO (a
    list of category names, a mapping category -> class name, ``"coco-traffic"`` (default) or
    ``"coco-all"``) and YOLO sets (a list of their class names to keep, or a mapping name ->
    new name / None; see :func:`~detprune.data.yolo_format.remap_classes`).
    """
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    if path.is_dir():
        if find_kitti_dirs(path):
            ids = read_frame_ids(_kitti_split_file(path, split)) if split else None
            return read_kitti(path, class_map or "kitti3", skip_bad, frame_ids=ids)
        if (path / "data.yaml").is_file():
            return _from_yaml(path / "data.yaml", class_map, skip_bad, split)
        if is_yolo_dir(path):
            return remap_classes(read_yolo_dir(path, split=split, skip_bad=skip_bad), class_map)
        coco_jsons = sorted((path / "annotations").glob("instances_*.json"))
        if coco_jsons:
            splits = [p.stem.removeprefix("instances_") for p in coco_jsons]
            if split is None and len(splits) > 1:
                raise BadInputError(f"{path}: has splits {', '.join(splits)}; choose one with split= / --split")
            chosen = path / "annotations" / f"instances_{split or splits[0]}.json"
            if not chosen.is_file():
                raise BadInputError(f"{path}: no split '{split}' (has: {', '.join(splits)})")
            return _read_coco_json(chosen, class_map, skip_bad)
    elif path.suffix in YAML_SUFFIXES:
        return _from_yaml(path, class_map, skip_bad, split)
    elif path.suffix == ".json":
        return _read_coco_json(path, class_map, skip_bad)
    raise BadInputError(
        f"{path}: not a dataset; expected a KITTI folder (image_2/, label_2/), a YOLO folder (images/, labels/), "
        "a dataset yaml or a COCO json"
    )


def load_train_val(
    spec: str | Path,
    *,
    class_map=None,
    skip_bad: bool = False,
    val_fraction: float | None = None,
    val_count: int | None = None,
    seed: int | None = None,
    val_list: str | Path | None = None,
    allow_empty_train: bool = False,
) -> tuple[DetectionSet, DetectionSet]:
    """(train, val): the source's own splits where it has them, else a seeded random split.

    ``val_fraction`` / ``val_count`` / ``seed`` override what a detprune dataset yaml says;
    without either, 20% go to val with seed 0. ``val_list`` (a file of frame ids, see
    :func:`read_id_list`) puts exactly those images in val and the rest of the whole set in
    train, e.g. KITTI's standard 3712/3769 split. ``allow_empty_train``: val may take every image.
    """
    path = Path(spec)
    if val_list is not None:
        if val_fraction is not None or val_count is not None:
            raise BadInputError("give either --val-list or --val-fraction / --val-count, not both")
        whole = load_whole(path, class_map=class_map, skip_bad=skip_bad)
        return split_by_ids(whole, read_id_list(val_list), source=str(val_list), allow_empty_train=allow_empty_train)
    defaults = _yaml_split_defaults(path)
    explicit_split = val_fraction is not None or val_count is not None
    if not explicit_split and has_splits(path):
        train = load_dataset(path, class_map=class_map, skip_bad=skip_bad, split="train")
        val = load_dataset(path, class_map=class_map, skip_bad=skip_bad, split="val")
        return train, val
    whole = load_dataset(path, class_map=class_map, skip_bad=skip_bad)
    if not explicit_split:
        val_fraction, val_count = defaults.get("val_fraction"), defaults.get("val_count")
    return split_dataset(
        whole,
        0.2 if val_fraction is None else float(val_fraction),
        int(defaults.get("seed", 0) if seed is None else seed),
        val_count=None if val_count is None else int(val_count),
        allow_empty_train=allow_empty_train,
    )


def load_whole(spec: str | Path, *, class_map=None, skip_bad: bool = False) -> DetectionSet:
    """Every image of ``spec``: one read, or its train and val splits together where they are apart."""
    path = Path(spec)
    if not has_splits(path):
        return load_dataset(path, class_map=class_map, skip_bad=skip_bad)
    if path.is_dir() and find_kitti_dirs(path):  # ImageSets/ lists frames of one folder
        return load_dataset(path, class_map=class_map, skip_bad=skip_bad)
    train = load_dataset(path, class_map=class_map, skip_bad=skip_bad, split="train")
    val = load_dataset(path, class_map=class_map, skip_bad=skip_bad, split="val")
    if list(train.class_names) != list(val.class_names):
        raise BadInputError(f"{path}: train and val class names differ: {train.class_names} vs {val.class_names}")
    skipped = {k: train.skipped.get(k, 0) + val.skipped.get(k, 0) for k in {**train.skipped, **val.skipped}}
    deviation = "; ".join(dict.fromkeys(d for d in (train.deviation, val.deviation) if d))
    return DetectionSet(list(train.class_names), train.samples + val.samples, name=train.name, skipped=skipped,
                        deviation=deviation)


def load_eval_split(
    spec: str | Path,
    split: str = "val",
    *,
    val_list: str | Path | None = None,
    class_map=None,
    skip_bad: bool = False,
    val_fraction: float | None = None,
    val_count: int | None = None,
    seed: int | None = None,
) -> DetectionSet:
    """The images an evaluation runs on: ``val`` (default: the split ``prune`` holds out, or the
    frames of ``val_list``), ``train`` (the rest) or ``all``."""
    if split not in EVAL_SPLITS:
        raise BadInputError(f"split {split!r}: choose one of {', '.join(EVAL_SPLITS)}")
    if split == "all":
        if val_list is not None or val_fraction is not None or val_count is not None:
            raise BadInputError("split 'all' evaluates every image; drop --val-list / --val-fraction / --val-count")
        return load_whole(spec, class_map=class_map, skip_bad=skip_bad)
    own_val = split == "val" and val_list is None and val_fraction is None and val_count is None
    if own_val and has_splits(spec):  # read val alone: an evaluation-only set has an empty train folder
        return load_dataset(spec, class_map=class_map, skip_bad=skip_bad, split="val")
    train, val = load_train_val(spec, class_map=class_map, skip_bad=skip_bad, val_fraction=val_fraction,
                                val_count=val_count, seed=seed, val_list=val_list, allow_empty_train=True)
    chosen = val if split == "val" else train
    if len(chosen) == 0:
        raise BadInputError(f"{spec}: the {split} split has no images")
    return chosen


def read_id_list(path: str | Path) -> list[str]:
    """Frame ids, one a line (``000123`` or an image's file stem); blank lines and ``#`` comments ignored."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: frame id list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not a text file of frame ids") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise BadInputError(f"{path}: lists no frame id")
    return ids


def has_splits(spec: str | Path) -> bool:
    """Whether ``spec`` defines its own train and val sets."""
    path = Path(spec)
    if path.is_dir():
        if (path / "data.yaml").is_file():
            return has_splits(path / "data.yaml")
        if find_kitti_dirs(path):
            return all((_imagesets(path) / f"{s}.txt").is_file() for s in ("train", "val"))
        if is_yolo_dir(path):
            return {"train", "val"} <= set(yolo_splits(path))
        return all((path / "annotations" / f"instances_{s}.json").is_file() for s in ("train", "val"))
    if path.suffix in YAML_SUFFIXES and path.is_file():
        data = load_yaml(path)
        splits = data.get("splits", {}) if "format" in data else data
        return isinstance(splits, dict) and bool(splits.get("train")) and bool(splits.get("val"))
    return False


def _imagesets(root: Path) -> Path:
    return root / "ImageSets"


def _kitti_split_file(root: Path, split: str) -> Path:
    candidate = _imagesets(root) / f"{split}.txt"
    if not candidate.is_file():
        raise BadInputError(f"{root}: no split list {candidate} (see datasets/README.md for KITTI's train/val lists)")
    return candidate


def _coco_categories(class_map) -> Sequence[str] | dict | None:
    if class_map is None:
        return COCO_TRAFFIC
    if isinstance(class_map, str):
        if class_map not in COCO_CATEGORY_SETS:
            raise BadInputError(
                f"unknown COCO category set '{class_map}'; choose {', '.join(COCO_CATEGORY_SETS)} or a list"
            )
        return COCO_CATEGORY_SETS[class_map]
    if isinstance(class_map, (list, tuple)):
        return [str(c) for c in class_map]
    if isinstance(class_map, dict):  # category name -> class name (several may merge), None drops
        return {str(k): (None if v is None else str(v)) for k, v in class_map.items()}
    raise BadInputError(
        "a COCO source takes a list of category names, or a mapping category -> class name, as its class map"
    )


def coco_images_dir(json_path: Path) -> Path:
    """``images/`` beside the json, else COCO's ``<split>/`` beside ``annotations/``."""
    split = json_path.stem.removeprefix("instances_")
    for candidate in (json_path.parent / "images", json_path.parent.parent / split, json_path.parent / split):
        if candidate.is_dir():
            return candidate
    return json_path.parent


def _read_coco_json(path: Path, class_map, skip_bad: bool, images: Path | None = None) -> DetectionSet:
    return read_coco(path, images or coco_images_dir(path), _coco_categories(class_map), skip_bad=skip_bad)


def _yaml_split_defaults(path: Path) -> dict:
    if path.suffix in YAML_SUFFIXES and path.is_file():
        data = load_yaml(path)
        if "format" in data:
            return split_settings(path, data)
    return {}


def split_settings(path: Path, data: dict) -> dict:
    """``val_fraction``, ``val_count``, ``seed`` of a dataset yaml, checked: a typo is one line, not a traceback."""
    checks = {
        "val_fraction": lambda x: real_number(x, f"{path}: val_fraction", low=0.0, high=1.0, low_open=True),
        "val_count": lambda x: whole_number(x, f"{path}: val_count", low=1),
        "seed": lambda x: whole_number(x, f"{path}: seed", low=0, high=2**32 - 1),
    }
    return {key: check(data[key]) for key, check in checks.items() if data.get(key) is not None}


def _from_yaml(path: Path, class_map, skip_bad: bool, split: str | None) -> DetectionSet:
    data = load_yaml(path)
    if "format" not in data:  # an ultralytics data yaml
        if split is None:
            available = [k for k in ("train", "val", "test") if data.get(k)]
            raise BadInputError(f"{path}: has splits {', '.join(available)}; choose one with split= / --split")
        return remap_classes(read_yolo_yaml(path, split, skip_bad=skip_bad), class_map)
    return _from_dataset_yaml(path, data, class_map, skip_bad, split)


def _from_dataset_yaml(path: Path, data: dict, class_map, skip_bad: bool, split: str | None) -> DetectionSet:
    """A detprune dataset yaml: ``format``, ``path`` and optionally ``splits``, ``class_map``."""
    fmt = str(data["format"])
    root = resolve_root(path, data.get("path"))
    if not root.exists():
        hint = f"; make it with: {data['prepare']}" if data.get("prepare") else "; see datasets/README.md"
        raise BadInputError(f"{path}: dataset folder {root} not found{hint}")
    splits = data.get("splits") or {}
    entry = splits.get(split) if split else None
    class_map = class_map if class_map is not None else data.get("class_map")
    if fmt == "yolo":
        return remap_classes(read_yolo_dir(root, split=split, skip_bad=skip_bad), class_map)
    if fmt == "coco":
        if not isinstance(entry, dict) or "annotations" not in entry:
            raise BadInputError(f"{path}: choose a split with split= / --split (has: {', '.join(splits) or 'none'})")
        categories = class_map if class_map is not None else data.get("categories")
        images = root / entry["images"] if entry.get("images") else None
        return _read_coco_json(root / entry["annotations"], categories, skip_bad, images)
    if fmt not in ("kitti", "synthetic"):
        raise BadInputError(f"{path}: unknown format '{fmt}' (kitti, synthetic, coco or yolo)")
    random_split = split is not None and entry is None
    if random_split and split not in ("train", "val"):
        raise BadInputError(f"{path}: no split '{split}' (has: {', '.join(splits) or 'train, val by a seeded split'})")
    ids = read_frame_ids(root / entry) if entry else None
    whole = read_kitti(root, class_map or "kitti3", skip_bad, frame_ids=ids)
    if not random_split:
        return whole
    settings = split_settings(path, data)
    train, val = split_dataset(
        whole, settings.get("val_fraction", 0.2), settings.get("seed", 0), val_count=settings.get("val_count")
    )
    return train if split == "train" else val
