"""pycocotools' per-image box matching, kept per detection so that AP can be recomputed for any
weighting of the images (a bootstrap resample) without matching again.

The rules are COCOeval's (``evaluateImg`` / ``accumulate``) with the ground truth that
:mod:`detprune.evaluation.coco` builds: an ignore box is a crowd of its class, a class-less box
(label -1) a crowd of every class; a crowd's overlap is over the detection's area. Per image and
class the detections are ranked by score (stable) and cut at 100; each is matched greedily, per IoU
threshold, to the unmatched ground truth of best IoU (the last of equals), ignored ground truth
(crowds, boxes outside the area range) only when no counted one matches. An unmatched detection
outside the area range is ignored. Across images, detections are ordered by score, stably, in
image order, as ``accumulate`` concatenates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError
from detprune.evaluation.inputs import check_predictions

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's own linspace, so equality tests are exact
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e5**2),
}
TP, FP, IGNORED = 1, 0, -1


@dataclass
class ClassMatches:
    """One class in one area range, detections in COCO's accumulation order."""

    image: np.ndarray  # (D,) image index of each detection
    score: np.ndarray  # (D,) float64
    status: np.ndarray  # (T, D) int8: TP, FP or IGNORED at each IoU threshold
    gt_count: np.ndarray  # (N,) ground truth that counts, per image


@dataclass
class MatchTable:
    """A model's detections matched against a dataset: ``areas[area][class index]``."""

    class_names: list[str]
    num_images: int
    areas: dict[str, list[ClassMatches]]


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]  # as coco.py writes them: x1, y1, x2 - x1, y2 - y1
    return out


def coco_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes, pycocotools' ``bbIou`` operation for operation."""
    d, g = dets[:, None, :], gts[None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = w * h
    d_area, g_area = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    union = np.where(crowd[None, :], d_area, d_area + g_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _last_best(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: index of the last maximum, and whether it is a real candidate (> -1)."""
    flipped = values[:, ::-1]
    index = values.shape[1] - 1 - flipped.argmax(axis=1)
    return index, values[np.arange(len(values)), index] > -1


def greedy_match(iou: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, det_outside: np.ndarray) -> np.ndarray:
    """(T, D) status of detections (rows of ``iou``, best score first) against ground truth (columns,
    ignored last), at every COCO IoU threshold at once."""
    num_t, (num_d, num_g) = len(IOU_THRESHOLDS), iou.shape
    status = np.full((num_t, num_d), FP, np.int8)
    if num_g:
        limit = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
        taken = np.zeros((num_t, num_g), bool)
        rows = np.arange(num_t)
        reachable = (iou >= limit[0, 0]).any(axis=1)  # a detection below 0.5 everywhere matches nothing
        for d in np.flatnonzero(reachable):
            eligible = (~taken | crowd[None, :]) & (iou[d][None, :] >= limit)
            scores = np.broadcast_to(iou[d], eligible.shape)
            regular, has_regular = _last_best(np.where(eligible & ~gt_ignore[None, :], scores, -1.0))
            ignored, has_ignored = _last_best(np.where(eligible & gt_ignore[None, :], scores, -1.0))
            match = np.where(has_regular, regular, np.where(has_ignored, ignored, -1))
            hit = match >= 0
            taken[rows[hit], match[hit]] = True
            status[hit, d] = np.where(gt_ignore[match[hit]], IGNORED, TP)
    status[(status == FP) & det_outside[None, :]] = IGNORED
    return status


def _image_class(sample, dets: Detections, label: int, areas: Sequence[str]):
    """Per area: (scores, status) of the image's detections of ``label`` and its counted gt."""
    gt_mask = (sample.labels == label) | (sample.labels < 0)
    gt = _xywh(sample.boxes[gt_mask])
    crowd = (sample.ignore | (sample.labels < 0))[gt_mask]
    own = np.flatnonzero(dets.labels == label)
    scores = dets.scores[own].astype(np.float64)
    order = own[np.argsort(-scores, kind="mergesort")][:MAX_DETS]
    dt = _xywh(dets.boxes[order])
    iou = coco_iou(dt, gt, crowd)
    gt_area, dt_area = gt[:, 2] * gt[:, 3], dt[:, 2] * dt[:, 3]
    out = {}
    for area in areas:
        low, high = AREA_RANGES[area]
        gt_ignore = crowd | (gt_area < low) | (gt_area > high)
        gt_order = np.argsort(gt_ignore, kind="mergesort")
        status = greedy_match(
            iou[:, gt_order], gt_ignore[gt_order], crowd[gt_order], (dt_area < low) | (dt_area > high)
        )
        out[area] = (dets.scores[order].astype(np.float64), status, int((~gt_ignore).sum()))
    return out


def match_detections(
    dataset: DetectionSet, predictions: Sequence[Detections], areas: Sequence[str] = tuple(AREA_RANGES)
) -> MatchTable:
    """Match one model's ``predictions`` (one per sample, in order) as COCOeval does, for ``areas``."""
    unknown = [a for a in areas if a not in AREA_RANGES]
    if unknown:
        raise BadInputError(f"unknown area range {unknown[0]!r}; choose from {', '.join(AREA_RANGES)}")
    predictions = check_predictions(dataset, predictions)
    num_images, num_classes = len(dataset), len(dataset.class_names)
    parts = {a: [([], [], [], np.zeros(num_images, np.int64)) for _ in range(num_classes)] for a in areas}
    for i, (sample, dets) in enumerate(zip(dataset.samples, predictions)):
        # a class with neither ground truth nor detections here adds nothing (COCOeval's None)
        present = set(sample.labels[sample.labels >= 0].tolist()) | set(dets.labels.tolist())
        for label in sorted(present):
            for area, (scores, status, counted) in _image_class(sample, dets, label, areas).items():
                images, score_parts, status_parts, gt_count = parts[area][label]
                images.append(np.full(len(scores), i, np.int64))
                score_parts.append(scores)
                status_parts.append(status)
                gt_count[i] = counted
    table: dict[str, list[ClassMatches]] = {}
    for area in areas:
        table[area] = []
        for images, score_parts, status_parts, gt_count in parts[area]:
            image = np.concatenate(images) if images else np.zeros(0, np.int64)
            score = np.concatenate(score_parts) if score_parts else np.zeros(0)
            status = (
                np.concatenate(status_parts, axis=1) if status_parts else np.zeros((len(IOU_THRESHOLDS), 0), np.int8)
            )
            order = np.argsort(-score, kind="mergesort")  # accumulate's order: by score, ties in image order
            table[area].append(ClassMatches(image[order], score[order], status[:, order], gt_count))
    return MatchTable(list(dataset.class_names), num_images, table)
