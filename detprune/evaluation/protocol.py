"""The one evaluation entry the toolkit calls: COCO metrics always, KITTI AP|R40 and AP|R11 for KITTI data."""

from __future__ import annotations

from typing import Mapping, Sequence

from detprune.data.types import DetectionSet, Detections
from detprune.errors import DetpruneError
from detprune.evaluation.coco import evaluate_coco
from detprune.evaluation.inputs import check_predictions
from detprune.evaluation.kitti import PROTOCOLS, evaluate_kitti

# KITTI's object types, lower-cased (also covers the merged 3-class set car/pedestrian/cyclist).
KITTI_TYPES = frozenset({"car", "van", "truck", "pedestrian", "person_sitting", "cyclist", "tram", "misc"})
KITTI_MAIN = frozenset({"car", "pedestrian", "cyclist"})

# evaluate_detections key <- evaluate_coco key
_FLAT = {
    "mAP": "AP",
    "mAP50": "AP50",
    "mAP75": "AP75",
    "AP_small": "AP_small",
    "AP_medium": "AP_medium",
    "AP_large": "AP_large",
    "AR100": "AR100",
}


def looks_like_kitti(dataset: DetectionSet) -> bool:
    """True when the classes are KITTI's or any box carries KITTI's truncation / occlusion attributes."""
    names = {name.lower() for name in dataset.class_names}
    if names and names <= KITTI_TYPES and names & KITTI_MAIN:
        return True
    return any(s.truncation.any() or s.occlusion.any() for s in dataset.samples)


def evaluate_detections(
    dataset: DetectionSet,
    predictions: Sequence[Detections],
    *,
    kitti: bool | None = None,
    kitti_min_overlap: Mapping[str, float] | None = None,
    kitti_protocol: str | None = None,
) -> dict:
    """Score ``predictions`` (one :class:`Detections` per sample, in order) against ``dataset``.

    Returns a flat dict: ``mAP`` (COCO AP .50:.95), ``mAP50``, ``mAP75``, ``AP_small``,
    ``AP_medium``, ``AP_large``, ``AR100``, ``per_class_AP`` ({class name: AP}),
    ``num_images``, ``num_objects`` and, for KITTI data, ``kitti`` (see
    :func:`~detprune.evaluation.kitti.evaluate_kitti`, computed with ``kitti_protocol``:
    ``"devkit"``, the official devkit's numbers and the default (None), or ``"exact"``). ``kitti=None`` decides from
    the data (:func:`looks_like_kitti`). Metrics are fractions in [0, 1], None where undefined.
    """
    if kitti_protocol is None:
        kitti_protocol = "devkit"
    if kitti_protocol not in PROTOCOLS:
        raise DetpruneError(f"unknown KITTI protocol {kitti_protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    predictions = check_predictions(dataset, predictions)
    coco = evaluate_coco(dataset, predictions)
    result: dict = {key: coco[source] for key, source in _FLAT.items()}
    result["per_class_AP"] = coco["per_class_AP"]
    use_kitti = looks_like_kitti(dataset) if kitti is None else kitti
    if use_kitti:
        result["kitti"] = evaluate_kitti(dataset, predictions, min_overlap=kitti_min_overlap, protocol=kitti_protocol)
    result["num_images"] = len(dataset)
    result["num_objects"] = int(sum(sample.num_objects for sample in dataset.samples))
    return result
