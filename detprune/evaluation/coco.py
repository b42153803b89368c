"""The COCO detection protocol through pycocotools, with the ground truth built in memory.

Ignore boxes become ``iscrowd=1`` annotations, which pycocotools neither asks to be found
nor lets count detections on them as false positives (overlap is measured over the
detection's area, as for crowds). A class-less region (label -1, e.g. KITTI DontCare) is
added as a crowd of every category, so it excuses detections of any class.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detprune.data.types import DetectionSet, Detections
from detprune.evaluation.inputs import check_predictions

# Order of COCOeval.stats for iouType "bbox".
_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)
REPORTED = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100")


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _quiet_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth(dataset: DetectionSet) -> COCO:
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(dataset.class_names)]
    images, annotations = [], []
    for image_id, sample in enumerate(dataset.samples, start=1):
        images.append(
            {"id": image_id, "width": sample.width, "height": sample.height, "file_name": str(sample.image_path)}
        )
        for box, label, ignore in zip(sample.boxes, sample.labels, sample.ignore):
            x, y, w, h = _xywh(box)
            crowd = bool(ignore) or label < 0
            category_ids = [c["id"] for c in categories] if label < 0 else [int(label) + 1]
            for category_id in category_ids:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": int(crowd),
                    }
                )
    return _quiet_coco({"images": images, "annotations": annotations, "categories": categories})


def _detections(gt: COCO, predictions: Sequence[Detections]) -> COCO:
    # Built like the ground truth rather than with COCO.loadRes, which rejects an empty list.
    annotations = []
    for image_id, dets in enumerate(predictions, start=1):
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
            x, y, w, h = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "score": float(score),
                    "iscrowd": 0,
                }
            )
    return _quiet_coco(
        {"images": gt.dataset["images"], "annotations": annotations, "categories": gt.dataset["categories"]}
    )


def _value(x: float) -> float | None:
    """pycocotools writes -1 where a bucket has no ground truth."""
    return None if x < 0 else float(x)


def evaluate_coco(dataset: DetectionSet, predictions: Sequence[Detections]) -> dict:
    """COCO box AP (IoU .50:.95), AP50, AP75, AP by size, AR at 100 detections, and AP per class name.

    A value is None where no ground truth exists for it (e.g. no small objects).
    """
    predictions = check_predictions(dataset, predictions)
    gt = _ground_truth(dataset)
    dt = _detections(gt, predictions)
    evaluator = COCOeval(gt, dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = dict(zip(_STAT_NAMES, evaluator.stats))
    result: dict = {name: _value(stats[name]) for name in REPORTED}

    # precision: [IoU threshold, recall, category, area range ("all" first), maxDets (100 last)]
    precision = evaluator.eval["precision"]
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(dataset.class_names):
        curve = precision[:, :, k, 0, -1]
        defined = curve[curve > -1]
        per_class[name] = float(defined.mean()) if defined.size else None
    result["per_class_AP"] = per_class
    return result
