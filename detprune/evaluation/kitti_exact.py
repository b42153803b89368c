"""The exact-recall KITTI statistic (``protocol="exact"``): the devkit's assignment, exact interpolation.

Precision is measured at every score at which a true positive enters, and AP|R40 is the mean
interpolated precision at recall 1/40, 2/40, ..., 1 (Simonelli et al., ICCV 2019); AP|R11 the
same at recall 0, 0.1, ..., 1. The devkit instead samples at most 41 score thresholds, which
under-counts classes with fewer than 40 objects (see :mod:`~detprune.evaluation.kitti_devkit`).
Two more differences from the devkit are kept so that older numbers stay reproducible: only
the class's own detections take part (a too-short detection of another class cannot take a
ground truth), and a ground truth exactly at the minimum height counts (``<`` instead of the
devkit's ``<=``). Ignore boxes and class-less regions are treated as in the devkit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detprune.data.types import Detections
from detprune.evaluation.kitti_common import DIFFICULTIES, Difficulty, box_coverage, box_iou

NUM_RECALL_POINTS = 40

# ground-truth states within one (class, difficulty)
_COUNTED, _IGNORED = 0, 1


def average_precision_r40(recall, precision) -> float:
    """Mean over r = 1/40 .. 1 of the best precision among operating points with recall >= r (0 if none)."""
    return _interpolated(recall, precision, np.arange(1, NUM_RECALL_POINTS + 1) / NUM_RECALL_POINTS)


def average_precision_r11(recall, precision) -> float:
    """Mean over r = 0, 0.1 .. 1 of the best precision among operating points with recall >= r (0 if none)."""
    return _interpolated(recall, precision, np.arange(11) / 10)


def _interpolated(recall, precision, points: np.ndarray) -> float:
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    reaches = recall[None, :] >= points[:, None] - 1e-9  # tolerate 20/40 computed as 0.49999...
    return float(np.where(reaches, precision[None, :], 0.0).max(axis=1, initial=0.0).mean())


@dataclass
class _Frame:
    """One image's boxes of one class, with the overlaps every difficulty reuses."""

    gt_height: np.ndarray
    gt_occlusion: np.ndarray
    gt_truncation: np.ndarray
    gt_labelled_ignore: np.ndarray  # ignore boxes that carry the class label (neighbouring classes)
    det_scores: np.ndarray
    det_height: np.ndarray
    iou: np.ndarray  # (G, D)
    dontcare_cover: np.ndarray  # (D,) largest fraction of each detection inside a class-less region

    @classmethod
    def build(cls, sample, dets: Detections, label: int) -> "_Frame":
        gt = sample.labels == label
        own = dets.labels == label
        gt_boxes, det_boxes = sample.boxes[gt].astype(np.float64), dets.boxes[own].astype(np.float64)
        regions = sample.boxes[sample.labels < 0]
        cover = box_coverage(det_boxes, regions).max(axis=1, initial=0.0)
        return cls(
            gt_height=gt_boxes[:, 3] - gt_boxes[:, 1],
            gt_occlusion=sample.occlusion[gt],
            gt_truncation=sample.truncation[gt].astype(np.float64),
            gt_labelled_ignore=sample.ignore[gt],
            det_scores=dets.scores[own].astype(np.float64),
            det_height=np.abs(det_boxes[:, 3] - det_boxes[:, 1]),
            iou=box_iou(gt_boxes, det_boxes),
            dontcare_cover=cover,
        )

    def states(self, level: Difficulty) -> tuple[np.ndarray, np.ndarray]:
        """(ground-truth state per box, detection-too-short flag) at one difficulty."""
        outside = (
            (self.gt_occlusion > level.max_occlusion)
            | (self.gt_truncation > level.max_truncation)
            | (self.gt_height < level.min_height)
        )
        gt_state = np.where(self.gt_labelled_ignore | outside, _IGNORED, _COUNTED)
        return gt_state, self.det_height < level.min_height


def _true_positive_scores(frame: _Frame, gt_state: np.ndarray, det_short: np.ndarray, min_overlap: float) -> np.ndarray:
    """Scores of the detections that find a counted object when each object takes its best-scored match."""
    taken = np.zeros(len(frame.det_scores), dtype=bool)
    found = []
    for g in range(len(gt_state)):
        candidates = (frame.iou[g] > min_overlap) & ~taken
        if not candidates.any():
            continue
        j = int(np.argmax(np.where(candidates, frame.det_scores, -np.inf)))
        taken[j] = True
        if gt_state[g] == _COUNTED and not det_short[j]:
            found.append(frame.det_scores[j])
    return np.asarray(found, dtype=np.float64)


def _count(
    frame: _Frame, gt_state: np.ndarray, det_short: np.ndarray, active: np.ndarray, min_overlap: float
) -> np.ndarray:
    """(TP, FP, FN) of one image when only the ``active`` detections (score above the threshold) exist."""
    taken = np.zeros(len(active), dtype=bool)
    tp = fn = 0
    matches = (frame.iou > min_overlap) & active[None, :]
    for g in range(len(gt_state)):
        candidates = matches[g] & ~taken
        if not candidates.any():
            fn += int(gt_state[g] == _COUNTED)
            continue
        full = candidates & ~det_short
        # the best-overlapping full-height detection, else the first short one
        j = int(np.argmax(np.where(full, frame.iou[g], -1.0))) if full.any() else int(np.argmax(candidates))
        taken[j] = True
        tp += int(gt_state[g] == _COUNTED and not det_short[j])
    unmatched = active & ~taken & ~det_short & ~(frame.dontcare_cover > min_overlap)
    return np.array([tp, int(unmatched.sum()), fn], dtype=np.int64)


def _curve(frames: list[_Frame], level: Difficulty, min_overlap: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(recall, precision) at every true-positive score of one class at one difficulty, and the objects that count."""
    states = [frame.states(level) for frame in frames]
    num_counted = int(sum((gt_state == _COUNTED).sum() for gt_state, _ in states))
    tp_scores = np.concatenate(
        [_true_positive_scores(f, g, s, min_overlap) for f, (g, s) in zip(frames, states)] + [np.zeros(0)]
    )
    if num_counted == 0 or tp_scores.size == 0:
        return np.zeros(0), np.zeros(0), num_counted
    thresholds = np.unique(tp_scores)[::-1]

    # Lowering the threshold only changes the images whose detections enter, so recount only those.
    per_image = np.zeros((len(frames), 3), dtype=np.int64)
    per_image[:, 2] = [(g == _COUNTED).sum() for g, _ in states]
    totals = per_image.sum(axis=0)
    entering: list[set[int]] = [set() for _ in thresholds]
    for index, frame in enumerate(frames):
        steps = np.searchsorted(-thresholds, -frame.det_scores, side="left")
        for step in np.unique(steps[steps < len(thresholds)]):
            entering[step].add(index)

    recall = np.zeros(len(thresholds))
    precision = np.zeros(len(thresholds))
    for step, threshold in enumerate(thresholds):
        for index in entering[step]:
            frame = frames[index]
            gt_state, det_short = states[index]
            counts = _count(frame, gt_state, det_short, frame.det_scores >= threshold, min_overlap)
            totals += counts - per_image[index]
            per_image[index] = counts
        tp, fp, fn = (int(x) for x in totals)
        recall[step] = tp / (tp + fn) if tp + fn else 0.0
        precision[step] = tp / (tp + fp) if tp + fp else 0.0
    return recall, precision, num_counted


def class_aps(
    samples, predictions, label: int, min_overlap: float
) -> dict[str, tuple[float | None, float | None, int]]:
    """{difficulty: (AP|R40, AP|R11, objects that count)} of one class; APs are None without objects."""
    frames = [_Frame.build(sample, dets, label) for sample, dets in zip(samples, predictions)]
    out = {}
    for level in DIFFICULTIES:
        recall, precision, num_counted = _curve(frames, level, min_overlap)
        if num_counted == 0:
            out[level.name] = (None, None, 0)
        else:
            out[level.name] = (
                average_precision_r40(recall, precision),
                average_precision_r11(recall, precision),
                num_counted,
            )
    return out
