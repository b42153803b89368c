"""What both KITTI protocols share: the difficulty levels, the overlap thresholds, box overlaps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Difficulty:
    """Which ground truth counts: tall enough, occlusion and truncation at most the maxima."""

    name: str
    min_height: float
    max_occlusion: int
    max_truncation: float


DIFFICULTIES: tuple[Difficulty, ...] = (
    Difficulty("easy", 40.0, 0, 0.15),
    Difficulty("moderate", 25.0, 1, 0.30),
    Difficulty("hard", 25.0, 2, 0.50),
)
# The devkit's 2D thresholds; any other class is judged at 0.5.
DEFAULT_MIN_OVERLAP: dict[str, float] = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
FALLBACK_MIN_OVERLAP = 0.5


def min_overlap_for(class_name: str, overrides: Mapping[str, float] | None = None) -> float:
    """The IoU a detection of ``class_name`` needs (case-insensitive); ``overrides`` win."""
    table = {**DEFAULT_MIN_OVERLAP, **{k.lower(): float(v) for k, v in (overrides or {}).items()}}
    return table.get(class_name.lower(), FALLBACK_MIN_OVERLAP)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M), in float64."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each box in ``a`` covered by each box in ``b`` (intersection over area of ``a``)."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def mean_over_classes(per_class: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Mean AP per difficulty over the classes that have an AP there (None if none has)."""
    mean: dict[str, float | None] = {}
    for level in DIFFICULTIES:
        values = [aps[level.name] for aps in per_class.values() if aps[level.name] is not None]
        mean[level.name] = float(np.mean(values)) if values else None
    return mean
