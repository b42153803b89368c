"""A model's detections on a dataset as one ``.npz``: store them once, score and bootstrap them later.

All images' boxes, scores and labels are concatenated, with each image's count and id, so the
file is a few flat arrays; boxes stay float64 and scores float32, so a round trip is exact.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError
from detprune.utils.atomic import atomic_path

FORMAT = "detprune-detections/1"
_KEYS = ("format", "image_ids", "counts", "boxes", "scores", "labels")


def save_detections(path: str | Path, predictions: Sequence[Detections], images: DetectionSet | Sequence[str]) -> Path:
    """Write ``predictions`` (one per image of ``images``, a dataset or its image ids, in order) atomically."""
    image_ids = [s.image_id for s in images.samples] if isinstance(images, DetectionSet) else list(images)
    predictions = list(predictions)
    if len(predictions) != len(image_ids):
        raise BadInputError(f"{len(predictions)} detections for {len(image_ids)} image ids; give one per image")
    counts = np.array([len(d.scores) for d in predictions], np.int64)
    arrays = {
        "format": np.array(FORMAT),
        "image_ids": np.array([str(i) for i in image_ids], dtype=str),
        "counts": counts,
        "boxes": np.concatenate([d.boxes for d in predictions]) if predictions else np.zeros((0, 4)),
        "scores": np.concatenate([d.scores for d in predictions]) if predictions else np.zeros(0, np.float32),
        "labels": np.concatenate([d.labels for d in predictions]) if predictions else np.zeros(0, np.int64),
    }
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_detections(path: str | Path, dataset: DetectionSet | None = None) -> list[Detections]:
    """Read a file of :func:`save_detections`; with ``dataset``, check it holds exactly its images, in order."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _KEYS if k not in data.files]
            if missing or str(data["format"]) != FORMAT:
                raise BadInputError(f"{path}: not a detprune detections file (expected {FORMAT})")
            ids, counts = [str(i) for i in data["image_ids"]], data["counts"]
            boxes, scores, labels = data["boxes"], data["scores"], data["labels"]
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such detections file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInputError(
            f"{path}: cannot be read as .npz ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None
    total = int(counts.sum()) if len(counts) else 0
    if len(counts) != len(ids) or (counts < 0).any() or not (len(boxes) == len(scores) == len(labels) == total):
        raise BadInputError(f"{path}: counts, boxes, scores and labels disagree; the file is damaged")
    if dataset is not None:
        expected = [s.image_id for s in dataset.samples]
        if ids != expected:
            where = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
            raise BadInputError(f"{path}: holds {len(ids)} images, '{dataset.name}' {len(expected)}; they first differ "
                                f"at position {where}; detections belong to the images they were made on")
    ends = np.cumsum(counts)
    return [Detections(boxes[e - n:e], scores[e - n:e], labels[e - n:e]) for n, e in zip(counts, ends)]
