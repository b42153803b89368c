"""The KITTI devkit's 2D statistic (``protocol="devkit"``, the default), rule for rule.

Per class and difficulty, every ground truth and detection of an image gets a state:

* ground truth: 0 counts (the class, inside the difficulty), 1 ignored (the class outside the
  difficulty, ``height <= min_height`` included, or an ignore box carrying the class label:
  a neighbouring class such as Van for Car), -1 takes no part (other classes, class-less regions);
* detection: 1 ignored if shorter than the minimum height (``height < min_height``), *whatever
  its class*; else 0 for the class's own detections and -1 (no part) for the others.

Assignment runs over the ground truth in order; an ignored detection may take a ground truth
(so a short detection of another class can absorb an object), and neither is then counted.
A first pass, where each ground truth takes the best-scored detection, gives the scores of the
true positives; at most 41 of them are kept as thresholds, one per recall step of 1/40
(:func:`sample_thresholds`). At each threshold a second pass, where each ground truth takes the
best-overlapping counted detection (else the first ignored one), gives TP, FP and FN; a false
positive that a class-less region covers by more than the class's overlap threshold
(intersection over the detection's area) is struck off. Precision over the 41 slots (unused
ones 0) is made non-increasing from the right; AP|R40 is the mean of slots 1..40, AP|R11 of
slots 0, 4, .., 40.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detprune.data.types import Detections
from detprune.evaluation.kitti_common import DIFFICULTIES, Difficulty, box_coverage, box_iou

NUM_SAMPLE_POINTS = 41

COUNTS, IGNORED, NO_PART = 0, 1, -1


def sample_thresholds(tp_scores: np.ndarray, num_counted: int, num_points: int = NUM_SAMPLE_POINTS) -> np.ndarray:
    """The scores, best first, whose recall lies closest to 0, 1/40, 2/40, ..; the last one always.

    Walking the true positives by score, a score is kept unless the next one's recall is nearer
    to the recall point being sought; each kept score moves the sought point up by one step.
    """
    scores = np.sort(np.asarray(tp_scores, dtype=np.float64))[::-1]
    kept: list[float] = []
    sought = 0.0
    last = len(scores) - 1
    for i, score in enumerate(scores):
        here = (i + 1) / num_counted
        following = (i + 2) / num_counted if i < last else here
        if i < last and (following - sought) < (sought - here):
            continue
        kept.append(float(score))
        sought += 1 / (num_points - 1.0)
    return np.array(kept, dtype=np.float64)


@dataclass
class _ClassImage:
    """One image's boxes as one class sees them; detections keep their order in the prediction."""

    gt_height: np.ndarray
    gt_occlusion: np.ndarray
    gt_truncation: np.ndarray
    gt_neighbour: np.ndarray  # ignore boxes with the class label: ignored at every difficulty
    det_own: np.ndarray  # (D,) the detection has the class's label
    det_height: np.ndarray
    det_scores: np.ndarray
    iou: np.ndarray  # (G, D): the class's ground truth against every detection
    region_cover: np.ndarray  # (D,) largest fraction of each detection inside a class-less region

    @classmethod
    def build(cls, sample, dets: Detections, label: int) -> "_ClassImage":
        gt = sample.labels == label
        gt_boxes = sample.boxes[gt].astype(np.float64)
        det_boxes = dets.boxes.astype(np.float64)
        regions = sample.boxes[sample.labels < 0].astype(np.float64)
        return cls(
            gt_height=gt_boxes[:, 3] - gt_boxes[:, 1],
            gt_occlusion=sample.occlusion[gt],
            gt_truncation=sample.truncation[gt].astype(np.float64),
            gt_neighbour=sample.ignore[gt],
            det_own=dets.labels == label,
            det_height=np.abs(det_boxes[:, 3] - det_boxes[:, 1]),
            det_scores=dets.scores.astype(np.float64),
            iou=box_iou(gt_boxes, det_boxes),
            region_cover=box_coverage(det_boxes, regions).max(axis=1, initial=0.0),
        )

    def at(self, level: Difficulty) -> "_Scored":
        """The boxes that take part at ``level``, with their states."""
        outside = (
            (self.gt_occlusion > level.max_occlusion)
            | (self.gt_truncation > level.max_truncation)
            | (self.gt_height <= level.min_height)
        )
        gt_state = np.where(self.gt_neighbour | outside, IGNORED, COUNTS)
        short = self.det_height < level.min_height
        det_state = np.where(short, IGNORED, np.where(self.det_own, COUNTS, NO_PART))
        part = det_state != NO_PART
        return _Scored(gt_state, det_state[part], self.det_scores[part], self.iou[:, part], self.region_cover[part])


@dataclass
class _Scored:
    gt_state: np.ndarray
    det_state: np.ndarray
    det_scores: np.ndarray
    iou: np.ndarray
    region_cover: np.ndarray

    @property
    def num_counted(self) -> int:
        return int((self.gt_state == COUNTS).sum())

    def true_positive_scores(self, min_overlap: float) -> list[float]:
        """First pass: each ground truth takes the best-scored free detection above the overlap."""
        taken = np.zeros(len(self.det_scores), dtype=bool)
        found = []
        for g, state in enumerate(self.gt_state):
            candidates = (self.iou[g] > min_overlap) & ~taken
            if not candidates.any():
                continue
            j = int(np.argmax(np.where(candidates, self.det_scores, -np.inf)))
            taken[j] = True
            if state == COUNTS and self.det_state[j] == COUNTS:
                found.append(float(self.det_scores[j]))
        return found

    def count(self, threshold: float, min_overlap: float) -> np.ndarray:
        """Second pass at one score threshold: (TP, FP, FN)."""
        active = self.det_scores >= threshold
        counted_det = self.det_state == COUNTS
        taken = np.zeros(len(active), dtype=bool)
        tp = fn = 0
        matches = (self.iou > min_overlap) & active[None, :]
        for g, state in enumerate(self.gt_state):
            candidates = matches[g] & ~taken
            if not candidates.any():
                fn += int(state == COUNTS)
                continue
            full = candidates & counted_det
            # the best-overlapping counted detection (the first on ties), else the first ignored one
            j = int(np.argmax(np.where(full, self.iou[g], -1.0))) if full.any() else int(np.argmax(candidates))
            taken[j] = True
            tp += int(state == COUNTS and counted_det[j])
        unmatched = active & ~taken & counted_det & ~(self.region_cover > min_overlap)
        return np.array([tp, int(unmatched.sum()), fn], dtype=np.int64)


def _precision(images: list[_Scored], min_overlap: float) -> tuple[np.ndarray | None, int]:
    """The devkit's 41-slot interpolated precision of one class at one difficulty, and the objects that count."""
    num_counted = sum(image.num_counted for image in images)
    if num_counted == 0:
        return None, 0
    tp_scores = [s for image in images for s in image.true_positive_scores(min_overlap)]
    # at most one threshold per sample point by construction; the slice only guards the array
    thresholds = sample_thresholds(np.array(tp_scores), num_counted)[:NUM_SAMPLE_POINTS]

    # Lowering the threshold only changes the images whose detections enter, so recount only those.
    per_image = np.zeros((len(images), 3), dtype=np.int64)
    per_image[:, 2] = [image.num_counted for image in images]
    totals = per_image.sum(axis=0)
    entering: list[list[int]] = [[] for _ in thresholds]
    for index, image in enumerate(images):
        steps = np.searchsorted(-thresholds, -image.det_scores, side="left")
        for step in np.unique(steps[steps < len(thresholds)]):
            entering[step].append(index)

    precision = np.zeros(NUM_SAMPLE_POINTS)
    for step, threshold in enumerate(thresholds):
        for index in entering[step]:
            counts = images[index].count(threshold, min_overlap)
            totals += counts - per_image[index]
            per_image[index] = counts
        tp, fp = int(totals[0]), int(totals[1])
        precision[step] = tp / (tp + fp) if tp + fp else 0.0
    return np.maximum.accumulate(precision[::-1])[::-1], num_counted


def class_aps(
    samples, predictions, label: int, min_overlap: float
) -> dict[str, tuple[float | None, float | None, int]]:
    """{difficulty: (AP|R40, AP|R11, objects that count)} of one class; APs are None without objects."""
    images = [_ClassImage.build(sample, dets, label) for sample, dets in zip(samples, predictions)]
    out = {}
    for level in DIFFICULTIES:
        precision, num_counted = _precision([image.at(level) for image in images], min_overlap)
        if precision is None:
            out[level.name] = (None, None, 0)
        else:
            out[level.name] = (float(precision[1:].sum() / 40), float(precision[0::4].sum() / 11), num_counted)
    return out
