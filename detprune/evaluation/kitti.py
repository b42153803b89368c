"""The KITTI 2D object protocol: AP|R40 per class at Easy, Moderate and Hard.

Assignment follows the official devkit (Geiger et al., CVPR 2012, ``evaluate_object``):

* a ground truth of the class outside the difficulty (too short, too occluded, too
  truncated) and an ignore box carrying the class label (Van for Car, Person_sitting for
  Pedestrian) is *ignored*: neither found nor missed, and a detection assigned to it is
  not a false positive;
* a detection shorter than the difficulty's minimum height is ignored the same way;
* a class-less region (label -1, KITTI DontCare) absorbs detections that cover it by more
  than the class's overlap threshold (intersection over the detection's area);
* for each ground truth in file order, the unassigned detection with the largest IoU above
  the class threshold is taken, preferring full-height detections.

Precision is measured at every score at which a true positive enters, and AP|R40 is the
mean interpolated precision at recall 1/40, 2/40, ..., 1 (Simonelli et al., "Disentangling
Monocular 3D Object Detection", ICCV 2019). The devkit samples one score per recall step,
which equals this for classes with many objects but under-counts below 40 of them; here the
number is exact at any size. Only the class's own detections take part: the devkit also
lets too-short detections of other classes take a ground truth, which is not copied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from detprune.data.types import DetectionSet, Detections
from detprune.evaluation.inputs import check_predictions


@dataclass(frozen=True)
class Difficulty:
    """Which ground truth counts: taller than ``min_height`` px, occlusion and truncation at most the maxima."""

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
NUM_RECALL_POINTS = 40

# ground-truth states within one (class, difficulty)
_COUNTED, _IGNORED = 0, 1


def min_overlap_for(class_name: str, overrides: Mapping[str, float] | None = None) -> float:
    """The IoU a detection of ``class_name`` needs (case-insensitive); ``overrides`` win."""
    table = {**DEFAULT_MIN_OVERLAP, **{k.lower(): float(v) for k, v in (overrides or {}).items()}}
    return table.get(class_name.lower(), FALLBACK_MIN_OVERLAP)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (N, 4) with every box in ``b`` (M, 4) -> (N, M)."""
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of each box in ``a`` covered by each box in ``b`` (intersection over area of ``a``)."""
    inter = _intersection(a, b)
    area = _area(a)[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def average_precision_r40(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean over r = 1/40 .. 1 of the best precision among operating points with recall >= r (0 if none)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    points = np.arange(1, NUM_RECALL_POINTS + 1) / NUM_RECALL_POINTS
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
        gt_boxes, det_boxes = sample.boxes[gt], dets.boxes[own]
        regions = sample.boxes[sample.labels < 0]
        cover = box_coverage(det_boxes, regions).max(axis=1, initial=0.0)
        return cls(
            gt_height=(gt_boxes[:, 3] - gt_boxes[:, 1]).astype(np.float64),
            gt_occlusion=sample.occlusion[gt],
            gt_truncation=sample.truncation[gt].astype(np.float64),
            gt_labelled_ignore=sample.ignore[gt],
            det_scores=dets.scores[own].astype(np.float64),
            det_height=np.abs(det_boxes[:, 3] - det_boxes[:, 1]).astype(np.float64),
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


def _class_ap(frames: list[_Frame], level: Difficulty, min_overlap: float) -> tuple[float | None, int]:
    """AP|R40 of one class at one difficulty, and the number of objects that count."""
    states = [frame.states(level) for frame in frames]
    num_counted = int(sum((gt_state == _COUNTED).sum() for gt_state, _ in states))
    if num_counted == 0:
        return None, 0
    tp_scores = np.concatenate(
        [_true_positive_scores(f, g, s, min_overlap) for f, (g, s) in zip(frames, states)] + [np.zeros(0)]
    )
    if tp_scores.size == 0:
        return 0.0, num_counted
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
    return average_precision_r40(recall, precision), num_counted


def evaluate_kitti(
    dataset: DetectionSet,
    predictions: Sequence[Detections],
    *,
    min_overlap: Mapping[str, float] | None = None,
) -> dict:
    """KITTI 2D AP|R40 of every class in ``dataset.class_names`` at each difficulty, as fractions in [0, 1].

    ``min_overlap`` overrides the IoU threshold per class name (default Car 0.7, Pedestrian and
    Cyclist 0.5, others 0.5). Returns ``{"per_class": {name: {"easy", "moderate", "hard"}},
    "mean": {difficulty: mean over classes with objects}, "num_objects": {name: {difficulty: n}},
    "min_overlap": {name: iou}, "metric": "AP_R40"}``; an AP is None where the class has no object
    that counts at that difficulty.
    """
    predictions = check_predictions(dataset, predictions)
    per_class: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    thresholds: dict[str, float] = {}
    for label, name in enumerate(dataset.class_names):
        thresholds[name] = min_overlap_for(name, min_overlap)
        frames = [_Frame.build(sample, dets, label) for sample, dets in zip(dataset.samples, predictions)]
        per_class[name], counts[name] = {}, {}
        for level in DIFFICULTIES:
            per_class[name][level.name], counts[name][level.name] = _class_ap(frames, level, thresholds[name])
    mean: dict[str, float | None] = {}
    for level in DIFFICULTIES:
        values = [aps[level.name] for aps in per_class.values() if aps[level.name] is not None]
        mean[level.name] = float(np.mean(values)) if values else None
    return {"metric": "AP_R40", "per_class": per_class, "mean": mean, "num_objects": counts, "min_overlap": thresholds}
