"""The KITTI 2D object protocol: AP|R40 and AP|R11 per class at Easy, Moderate and Hard.

Two statistics over the same assignment rules (Geiger et al., CVPR 2012, devkit
``evaluate_object``; AP|R40: Simonelli et al., ICCV 2019):

``protocol="devkit"`` (default)
    the official devkit's numbers, rule for rule (:mod:`~detprune.evaluation.kitti_devkit`):
    at most 41 sampled score thresholds, so perfect predictions on N <= 40 objects give
    (N - 1) / 40, not 1; a too-short detection of another class may absorb a ground truth;
    a ground truth at exactly the minimum height is ignored.
``protocol="exact"``
    detprune's earlier exact-recall variant (:mod:`~detprune.evaluation.kitti_exact`):
    precision at every true-positive score; kept to reproduce older numbers.

How detprune's boxes map onto the devkit's classes, for the class being evaluated:

* a box with the class label and ``ignore`` False is that class (devkit valid class 1);
* a box with the class label and ``ignore`` True is a neighbouring class (valid class 0: the
  ``kitti3`` class map keeps Van as such a box for Car, Person_sitting for Pedestrian);
* every other box takes no part (valid class -1); a class-less box (label -1, KITTI DontCare)
  is moreover a region that excuses false positives it covers;
* a detection with another label is a detection of "another class".

Boxes are compared in float64, as read from the file.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from detprune.data.types import DetectionSet, Detections
from detprune.errors import DetpruneError
from detprune.evaluation import kitti_devkit, kitti_exact
from detprune.evaluation.inputs import check_predictions
from detprune.evaluation.kitti_common import (  # noqa: F401  (re-exported: the protocol's constants)
    DEFAULT_MIN_OVERLAP,
    DIFFICULTIES,
    FALLBACK_MIN_OVERLAP,
    Difficulty,
    box_coverage,
    box_iou,
    mean_over_classes,
    min_overlap_for,
)

PROTOCOLS = {"devkit": kitti_devkit, "exact": kitti_exact}
METRIC = {
    "devkit": "KITTI 2D AP_R40 (devkit: 41 sampled score thresholds)",
    "exact": "KITTI 2D AP_R40 (exact recall)",
}


def evaluate_kitti(
    dataset: DetectionSet,
    predictions: Sequence[Detections],
    *,
    min_overlap: Mapping[str, float] | None = None,
    protocol: str = "devkit",
) -> dict:
    """KITTI 2D AP of every class in ``dataset.class_names`` at each difficulty, as fractions in [0, 1].

    ``protocol`` is ``"devkit"`` (the official devkit's numbers) or ``"exact"`` (exact-recall
    interpolation, see the module docstring). ``min_overlap`` overrides the IoU threshold per
    class name (default Car 0.7, Pedestrian and Cyclist 0.5, others 0.5). Returns
    ``{"per_class": {name: {"easy", "moderate", "hard"}}, "mean": {difficulty: mean over classes
    with objects}`` (both AP|R40), ``"per_class_R11"``, ``"mean_R11"`` (AP|R11 alike),
    ``"num_objects": {name: {difficulty: n}}, "min_overlap": {name: iou}, "protocol", "metric"}``;
    an AP is None where the class has no object that counts at that difficulty. ``"deviation"``
    is added where the labels depart from KITTI's (``DetectionSet.deviation``).
    """
    if protocol not in PROTOCOLS:
        raise DetpruneError(f"unknown KITTI protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    statistic = PROTOCOLS[protocol]
    predictions = check_predictions(dataset, predictions)
    r40: dict[str, dict[str, float | None]] = {}
    r11: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    thresholds: dict[str, float] = {}
    for label, name in enumerate(dataset.class_names):
        thresholds[name] = min_overlap_for(name, min_overlap)
        levels = statistic.class_aps(dataset.samples, predictions, label, thresholds[name])
        r40[name] = {level: aps[0] for level, aps in levels.items()}
        r11[name] = {level: aps[1] for level, aps in levels.items()}
        counts[name] = {level: aps[2] for level, aps in levels.items()}
    deviation = {"deviation": dataset.deviation} if getattr(dataset, "deviation", "") else {}
    return {
        **deviation,
        "metric": METRIC[protocol],
        "protocol": protocol,
        "per_class": r40,
        "mean": mean_over_classes(r40),
        "per_class_R11": r11,
        "mean_R11": mean_over_classes(r11),
        "num_objects": counts,
        "min_overlap": thresholds,
    }
