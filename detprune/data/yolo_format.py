"""YOLO-format datasets: ``images/`` beside ``labels/``, one ``cls cx cy w h`` line per box.

Coordinates are normalised to the image size. As in ultralytics, an image's label file is its
path with the last ``/images/`` replaced by ``/labels/`` and the suffix by ``.txt``, and an
image without a label file is a background image. The format has no ignore regions, so
ignore boxes are not written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from detprune.data import validation as v
from detprune.data.types import DetectionSet, Sample
from detprune.errors import BadInputError
from detprune.utils.numbers import whole_number
from detprune.utils.progress import progress_bar


def label_path_for(image_path: Path) -> Path:
    """The ultralytics rule: ``.../images/a/b.jpg`` -> ``.../labels/a/b.txt``."""
    text = os.fspath(image_path)
    sep_images, sep_labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sep_images not in text:
        raise BadInputError(f"{image_path}: a YOLO image must lie under an images/ folder")
    return Path(sep_labels.join(text.rsplit(sep_images, 1))).with_suffix(".txt")


def is_yolo_dir(root: str | Path) -> bool:
    root = Path(root)
    return (root / "images").is_dir() and (root / "labels").is_dir()


def yolo_splits(root: Path) -> list[str]:
    """Split folders under ``images/`` (``train``, ``val``...), empty for a flat layout."""
    return sorted(p.name for p in (root / "images").iterdir() if p.is_dir())


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in v.IMAGE_SUFFIXES and p.is_file())


def read_yolo_dir(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    split: str | None = None,
    skip_bad: bool = False,
) -> DetectionSet:
    """Read ``root/images[/split]`` and ``root/labels[/split]``.

    Class names come from ``class_names``, else a ``data.yaml`` or ``classes.txt`` in ``root``,
    else they are numbered (``class0``...) up to the largest id found.
    """
    root = Path(root)
    if not is_yolo_dir(root):
        raise BadInputError(f"{root}: not a YOLO folder (expected images/ and labels/)")
    splits = yolo_splits(root)
    if split is None and splits and not any(p.is_file() for p in (root / "images").iterdir()):
        raise BadInputError(f"{root}: has splits {', '.join(splits)}; choose one with split= / --split")
    image_dir = root / "images" / split if split else root / "images"
    if split and not image_dir.is_dir():
        raise BadInputError(f"{root}: no split '{split}' (found: {', '.join(splits) or 'none'})")
    if class_names is None:
        class_names = _names_beside(root)
    images = _list_images(image_dir)
    problems = v.BadInputs(root, skip_bad)
    report_orphan_labels(image_dir, images, problems)
    return read_yolo_images(images, class_names, problems, name=root.resolve().name)


def report_orphan_labels(image_dir: Path, images: Sequence[Path], problems: v.BadInputs) -> None:
    """A label file under the ``labels/`` twin of ``image_dir`` whose image is not among ``images``.

    One rule for a YOLO folder and for each image folder a data yaml names.
    """
    try:
        label_dir = label_path_for(Path(os.path.abspath(image_dir)) / "x").parent
        expected_labels = {label_path_for(Path(os.path.abspath(p))) for p in images}
    except BadInputError:  # not under an images/ folder: no labels/ twin to look in
        return
    if not label_dir.is_dir():
        return
    for orphan in sorted(set(label_dir.rglob("*.txt")) - expected_labels):
        problems.report(v.LABEL_WITHOUT_IMAGE, f"{orphan}: no image for this label file in {image_dir}")


def _names_beside(root: Path) -> list[str] | None:
    for candidate in (root / "data.yaml", root / "dataset.yaml"):
        if candidate.is_file():
            data = yaml.safe_load(candidate.read_text()) or {}
            if "names" in data:
                return parse_names(data["names"], candidate)
    if (root / "classes.txt").is_file():
        return [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    return None


def parse_names(names, source: Path) -> list[str]:
    """``names`` of a data yaml: a list, or a dict ``{0: car, 1: person}``."""
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise BadInputError(f"{source}: names must be a list or a dict of integer ids") from None
        if ids != list(range(len(ids))):
            raise BadInputError(f"{source}: names ids must be 0..{len(ids) - 1}")
        return [str(names.get(i, names.get(str(i)))) for i in ids]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise BadInputError(f"{source}: names must be a list or a dict of integer ids")


def read_yolo_yaml(path: str | Path, split: str = "val", *, skip_bad: bool = False) -> DetectionSet:
    """Read one split of an ultralytics data yaml (``path``, ``train``, ``val``, ``names``).

    A relative ``path`` is taken relative to the yaml's folder, then to the working directory.
    A split entry is an image folder, a ``.txt`` list of image paths, or a list of these.
    """
    path = Path(path)
    data = load_yaml(path)
    if "names" not in data and "nc" not in data:
        raise BadInputError(f"{path}: a YOLO data yaml needs 'names' (or 'nc')")
    names = (parse_names(data["names"], path) if "names" in data
             else [f"class{i}" for i in range(whole_number(data["nc"], f"{path}: nc", low=1, high=100_000))])
    root = resolve_root(path, data.get("path"))
    entry = data.get(split)
    if not entry:
        available = [k for k in ("train", "val", "test") if data.get(k)]
        raise BadInputError(f"{path}: no split '{split}' (has: {', '.join(available) or 'none'})")
    images: list[Path] = []
    problems = v.BadInputs(path, skip_bad)
    for item in entry if isinstance(entry, list) else [entry]:
        location = Path(item) if Path(item).is_absolute() else root / item
        if location.is_dir():
            found = _list_images(location)
            report_orphan_labels(location, found, problems)
            images += found
        elif location.is_file() and location.suffix == ".txt":
            images += _read_image_list(location)
        else:
            raise BadInputError(
                f"{path}: split '{split}' entry {item!r} is neither an image folder nor a .txt list ({location})"
            )
    return read_yolo_images(images, names, problems, name=path.stem)


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise BadInputError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise BadInputError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a mapping of keys such as path, train, val, names")
    return data


def resolve_root(yaml_path: Path, root) -> Path:
    """The dataset root a yaml names: absolute, else beside the yaml, else from the working directory."""
    if not root:
        return yaml_path.parent
    root = Path(str(root)).expanduser()
    if root.is_absolute():
        return root
    beside = yaml_path.parent / root
    return beside if beside.exists() or not root.exists() else root


def _read_image_list(list_path: Path) -> list[Path]:
    images = []
    for line in list_path.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line:
            p = Path(line)
            images.append(p if p.is_absolute() else list_path.parent / p)
    return images


def read_yolo_images(
    images: Iterable[Path],
    class_names: Sequence[str] | None,
    problems: v.BadInputs,
    name: str = "dataset",
) -> DetectionSet:
    """Samples for ``images`` with the label files the ultralytics rule gives them."""
    images = list(images)
    if not images:
        raise BadInputError(f"{problems.source}: no images (.png/.jpg/.jpeg); is this an empty folder?")
    num_classes = None if class_names is None else len(class_names)
    samples = []
    for image_path in progress_bar(images, total=len(images), desc="reading YOLO labels", disable=len(images) < 500):
        sample = _read_one(Path(image_path), num_classes, problems)
        if sample is not None:
            samples.append(sample)
    if not samples:
        raise BadInputError(f"{problems.source}: no usable images ({problems.summary()})")
    if class_names is None:  # number them up to the largest id seen
        top = max((int(s.labels.max()) for s in samples if len(s.labels)), default=-1)
        class_names = [f"class{i}" for i in range(top + 1)]
    return DetectionSet(list(class_names), samples, name=name, skipped=problems.log_summary())


def _read_one(image_path: Path, num_classes: int | None, problems: v.BadInputs) -> Sample | None:
    if not image_path.is_file():
        problems.report(v.LABEL_WITHOUT_IMAGE, f"{image_path}: image listed but not found")
        return None
    size = v.readable_size(image_path, problems)
    if size is None:
        return None
    width, height = size
    label_path = label_path_for(image_path)
    boxes, labels = [], []
    text = v.read_label_text(label_path, problems) if label_path.is_file() else ""
    if text is None:
        return None
    lines = text.splitlines()
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        place = v.where(label_path, line_no)
        fields = line.split()
        if len(fields) != 5:
            problems.report(v.MALFORMED_LINE, f"{place}: expected 5 fields (cls cx cy w h), got {len(fields)}")
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            problems.report(v.MALFORMED_LINE, f"{place}: not all of {' '.join(fields)!r} are numbers")
            continue
        cls = values[0]
        if cls != int(cls) or cls < 0 or (num_classes is not None and cls >= num_classes):
            problems.report(v.UNKNOWN_CLASS, f"{place}: class id {fields[0]} is not one of 0..{(num_classes or 1) - 1}")
            continue
        cx, cy, w, h = values[1:]
        box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        if v.check_box(problems, place, box, width, height):
            boxes.append(box)
            labels.append(int(cls))
    return Sample(image_path, width, height, np.array(boxes, np.float32).reshape(-1, 4), labels)


def remap_classes(dataset: DetectionSet, class_map) -> DetectionSet:
    """A YOLO set's classes chosen, renamed or merged by name; its own names stay without a map.

    ``class_map``: a list of the set's class names (kept in that order, the others dropped),
    or a mapping name -> new name (several may merge into one) or None (dropped); names the
    mapping does not list are dropped. Names match case-insensitively. A named map such as
    ``kitti3`` describes KITTI's raw types and does not apply.
    """
    if class_map is None:
        return dataset
    if isinstance(class_map, str):
        raise BadInputError(f"class map {class_map!r} names KITTI or COCO classes; a YOLO set takes a list of its "
                            f"class names ({', '.join(dataset.class_names)}) or a mapping name -> new name")
    if isinstance(class_map, (list, tuple)):
        class_map = {str(name): str(name) for name in class_map}
    if not isinstance(class_map, dict):
        raise BadInputError(f"a YOLO set takes a list or a mapping as its class map, got {type(class_map).__name__}")
    own = {name.lower(): i for i, name in enumerate(dataset.class_names)}
    unknown = [str(k) for k in class_map if str(k).lower() not in own]
    if unknown:
        raise BadInputError(f"class map names {', '.join(unknown)}, not classes of '{dataset.name}' "
                            f"({', '.join(dataset.class_names)})")
    names: list[str] = []
    new_label = np.full(len(dataset.class_names), -2, np.int64)  # -2: dropped
    for old, new in class_map.items():
        if new is None:
            continue
        if str(new) not in names:
            names.append(str(new))
        new_label[own[str(old).lower()]] = names.index(str(new))
    if not names:
        raise BadInputError("class map keeps no class")
    samples = []
    for s in dataset.samples:
        labels = np.where(s.labels >= 0, new_label[s.labels.clip(0)], s.labels)  # -1 regions stay
        keep = labels != -2
        samples.append(Sample(s.image_path, s.width, s.height, s.boxes[keep], labels[keep], s.ignore[keep],
                              s.truncation[keep], s.occlusion[keep], s.source[keep]))
    return DetectionSet(names, samples, name=dataset.name, skipped=dataset.skipped, deviation=dataset.deviation)


def format_yolo_labels(sample: Sample) -> str:
    """The label file of ``sample``: objects only, clipped into the image, 6 decimals."""
    keep = ~sample.ignore & (sample.labels >= 0)
    boxes = sample.boxes[keep].astype(np.float64)
    # Clip: KITTI boxes may pass the border by a fraction of a pixel and ultralytics drops
    # an image whose normalised coordinates leave [0, 1].
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, sample.width) / sample.width
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, sample.height) / sample.height
    lines = []
    for label, (x1, y1, x2, y2) in zip(sample.labels[keep], boxes):
        if x2 > x1 and y2 > y1:
            lines.append(f"{int(label)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def place_image(source: Path, target: Path, link: bool = True) -> None:
    """Symlink (or copy) an image into an output folder; the source is never touched."""
    if link:
        try:
            target.symlink_to(source.resolve())
            return
        except OSError:  # filesystems without symlinks
            pass
    shutil.copy2(source, target)


def write_yolo_split(dataset: DetectionSet, root: Path, split: str, link: bool = True) -> int:
    """Write ``root/images/<split>`` and ``root/labels/<split>``; returns the objects written."""
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Path] = {}
    written = 0
    for sample in progress_bar(dataset, total=len(dataset), desc=f"writing {split}", disable=len(dataset) < 500):
        name = sample.image_path.name
        if name in seen:
            raise BadInputError(f"{sample.image_path}: same file name as {seen[name]} in split '{split}'; rename one")
        seen[name] = sample.image_path
        place_image(sample.image_path, image_dir / name, link)
        text = format_yolo_labels(sample)
        (label_dir / f"{sample.image_path.stem}.txt").write_text(text)
        written += text.count("\n")
    return written
