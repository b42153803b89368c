"""KITTI 2D object ``label_2`` files: reading, and writing lines in the same format.

Each line of ``label_2/<frame>.txt`` has 15 whitespace-separated fields (KITTI object devkit,
``readme.txt``): type, truncated (0..1), occluded (0 visible, 1 partly, 2 largely, 3 unknown),
alpha, the 2D box x1 y1 x2 y2 in pixels, dimensions h w l and location x y z in metres (camera
coordinates), rotation_y. Result files add a 16th field, the score.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from detprune.data import validation as v
from detprune.data.classmaps import ClassMapSpec, get_class_map
from detprune.data.kitti_deviation import kitti_deviation
from detprune.data.types import DetectionSet, Detections, Sample
from detprune.errors import BadInputError
from detprune.utils.progress import progress_bar

FIELD_NAMES = (
    "type", "truncated", "occluded", "alpha", "x1", "y1", "x2", "y2",
    "height", "width", "length", "x", "y", "z", "rotation_y", "score",
)
NUM_FIELDS = 15


def find_kitti_dirs(root: str | Path) -> tuple[Path, Path] | None:
    """(image_2, label_2) under ``root`` or ``root/training``; None if neither layout is there."""
    root = Path(root)
    for base in (root, root / "training"):
        if (base / "image_2").is_dir() and (base / "label_2").is_dir():
            return base / "image_2", base / "label_2"
    return None


def is_kitti_dir(root: str | Path) -> bool:
    return find_kitti_dirs(root) is not None


def _index_images(image_dir: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in v.IMAGE_SUFFIXES:
            images.setdefault(path.stem, path)
    return images


def _parse_line(line: str, place: str, problems: v.BadInputs) -> tuple[str, list[float]] | None:
    """(type, 14 or 15 numbers) of one label line, or None if it is malformed (and skipped)."""
    fields = line.split()
    if len(fields) not in (NUM_FIELDS, NUM_FIELDS + 1):
        problems.report(v.MALFORMED_LINE, f"{place}: expected {NUM_FIELDS} fields, got {len(fields)}")
        return None
    numbers = []
    for i, text in enumerate(fields[1:], start=1):
        try:
            numbers.append(float(text))
        except ValueError:
            problems.report(
                v.MALFORMED_LINE, f"{place}: field {i + 1} ({FIELD_NAMES[i]}) is not a number: {text!r}"
            )
            return None
    return fields[0], numbers


def read_kitti(
    root: str | Path,
    class_map: ClassMapSpec = "kitti3",
    skip_bad: bool = False,
    *,
    frame_ids: Iterable[str] | None = None,
    progress: bool = True,
) -> DetectionSet:
    """Read a KITTI folder (``image_2/`` + ``label_2/``, directly or under ``training/``).

    ``class_map`` is a name from :mod:`detprune.data.classmaps`, a dict or a ClassMap.
    ``frame_ids`` restricts the read to those frames (a split list such as ``ImageSets/val.txt``).
    Bad input raises :class:`BadInputError` naming the file and line, or with ``skip_bad`` is
    left out and counted in ``DetectionSet.skipped``. Labels that depart from KITTI's (the merged
    ``OtherVehicle``, no ``DontCare``) are named in ``DetectionSet.deviation``.
    """
    dirs = find_kitti_dirs(root)
    if dirs is None:
        raise BadInputError(
            f"{root}: not a KITTI folder (expected image_2/ and label_2/, or training/image_2/ and training/label_2/)"
        )
    image_dir, label_dir = dirs
    cmap = get_class_map(class_map)
    problems = v.BadInputs(root, skip_bad)

    label_files = sorted(p for p in label_dir.iterdir() if p.suffix == ".txt")
    images = _index_images(image_dir)
    if frame_ids is not None:
        wanted = [str(f).strip() for f in frame_ids if str(f).strip()]
        missing = [f for f in wanted if not (label_dir / f"{f}.txt").is_file()]
        if missing:
            raise BadInputError(
                f"{label_dir}: split lists {len(missing)} frame(s) without a label file, e.g. {missing[0]}"
            )
        keep = set(wanted)
        label_files = [p for p in label_files if p.stem in keep]
        images = {k: p for k, p in images.items() if k in keep}
    if not label_files:
        raise BadInputError(f"{label_dir}: no label files (*.txt); is this an empty folder?")

    for stem in sorted(set(images) - {p.stem for p in label_files}):
        problems.report(v.IMAGE_WITHOUT_LABEL, f"{images[stem]}: image has no label file in {label_dir}")

    samples, types = [], Counter()
    for label_path in progress_bar(
        label_files, total=len(label_files), desc="reading KITTI labels", disable=not progress or len(label_files) < 500
    ):
        sample = _read_frame(label_path, images.get(label_path.stem), cmap, problems, types)
        if sample is not None:
            samples.append(sample)
    if not samples:
        raise BadInputError(f"{root}: no usable frames ({problems.summary() or 'none found'})")
    skipped = problems.log_summary()
    return DetectionSet(list(cmap.class_names), samples, name=Path(root).resolve().name, skipped=skipped,
                        deviation=kitti_deviation(types, cmap))


def _parsed_lines(path: Path, problems: v.BadInputs, text: str | None = None):
    """(place, class name, numbers) for each non-blank line of a label or result file that parses;
    lines that do not, and a file that is not text, are reported to ``problems``."""
    if text is None:
        text = v.read_label_text(path, problems) or ""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            place = v.where(path, line_no)
            parsed = _parse_line(line, place, problems)
            if parsed is not None:
                yield place, *parsed


def _read_frame(
    label_path: Path, image_path: Path | None, cmap, problems: v.BadInputs, types: Counter
) -> Sample | None:
    if image_path is None:
        problems.report(
            v.LABEL_WITHOUT_IMAGE, f"{label_path}: no image {label_path.stem}.png/.jpg/.jpeg beside it in image_2/"
        )
        return None
    size = v.readable_size(image_path, problems)
    if size is None:
        return None
    width, height = size
    text = v.read_label_text(label_path, problems)
    if text is None:  # not a text file: the frame is left out, never read as one without objects
        return None
    boxes, labels, ignore, truncation, occlusion, sources = [], [], [], [], [], []
    for place, raw, numbers in _parsed_lines(label_path, problems, text):
        try:
            rule = cmap.lookup(raw)
        except KeyError:
            problems.report(
                v.UNKNOWN_CLASS,
                f"{place}: unknown class {raw!r} (class map {cmap.name} knows {', '.join(sorted(cmap.known))})",
            )
            continue
        types[raw] += 1
        box = tuple(numbers[3:7])
        if not v.check_box(problems, place, box, width, height) or rule is None:
            continue
        boxes.append(box)
        labels.append(rule.label)
        ignore.append(rule.ignore)
        truncation.append(min(max(numbers[0], 0.0), 1.0))  # DontCare writes -1
        occlusion.append(int(numbers[1]) if 0 <= numbers[1] <= 3 else 3)  # -1 -> unknown
        sources.append(raw)
    return Sample(
        image_path,
        width,
        height,
        np.array(boxes, np.float64).reshape(-1, 4),
        labels,
        ignore,
        truncation,
        occlusion,
        sources,
    )


def read_frame_ids(path: str | Path) -> list[str]:
    """Frame ids of a split list (one per line, e.g. ``ImageSets/val.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: split list not found (see datasets/README.md for the train/val lists)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def format_kitti_line(
    type_: str,
    box: Sequence[float],
    *,
    truncated: float = 0.0,
    occluded: int = 0,
    alpha: float = -10.0,
    dimensions: Sequence[float] = (-1.0, -1.0, -1.0),
    location: Sequence[float] = (-1000.0, -1000.0, -1000.0),
    rotation_y: float = -10.0,
    score: float | None = None,
) -> str:
    """One ``label_2`` line; without 3D information the devkit's placeholders are written."""
    fields = [type_, f"{truncated:.2f}", str(int(occluded)), f"{alpha:.2f}"]
    fields += [f"{c:.2f}" for c in box] + [f"{d:.2f}" for d in dimensions] + [f"{c:.2f}" for c in location]
    fields.append(f"{rotation_y:.2f}")
    if score is not None:
        fields.append(f"{score:.4f}")
    return " ".join(fields)


def read_kitti_results(result_dir: str | Path, class_names: Sequence[str]) -> dict[str, Detections]:
    """Detections per frame id from KITTI result files (16 fields, the last the score)."""
    result_dir = Path(result_dir)
    files = sorted(result_dir.glob("*.txt"))
    if not files:
        raise BadInputError(f"{result_dir}: no result files (*.txt)")
    index = {name: i for i, name in enumerate(class_names)}
    problems = v.BadInputs(result_dir)
    out: dict[str, Detections] = {}
    for path in files:
        boxes, scores, labels = [], [], []
        for place, raw, numbers in _parsed_lines(path, problems):
            if len(numbers) != NUM_FIELDS:
                problems.report(v.MALFORMED_LINE, f"{place}: a result line needs the 16th field, the score")
                continue
            if raw not in index:
                problems.report(
                    v.UNKNOWN_CLASS, f"{place}: unknown class {raw!r} (expected one of {', '.join(class_names)})"
                )
                continue
            boxes.append(numbers[3:7])
            scores.append(numbers[14])
            labels.append(index[raw])
        out[path.stem] = Detections(np.array(boxes, np.float64), scores, labels)
    return out
