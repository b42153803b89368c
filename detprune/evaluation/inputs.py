"""Checks shared by every protocol: one prediction per image, labels the dataset knows."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detprune.data.types import DetectionSet, Detections
from detprune.errors import BadInputError, DetpruneError


def check_predictions(dataset: DetectionSet, predictions: Sequence[Detections]) -> list[Detections]:
    """Return ``predictions`` as a list after checking they fit ``dataset``; raise a one-line error otherwise."""
    predictions = list(predictions)
    if len(dataset) == 0:
        raise DetpruneError(f"dataset '{dataset.name}' has no images; nothing to evaluate")
    if len(predictions) != len(dataset):
        raise DetpruneError(
            f"{len(predictions)} predictions for {len(dataset)} images of dataset '{dataset.name}'; "
            "give one Detections per image, in dataset order"
        )
    num_classes = len(dataset.class_names)
    for index, (sample, dets) in enumerate(zip(dataset.samples, predictions)):
        if not isinstance(dets, Detections):
            raise DetpruneError(
                f"predictions[{index}] ({sample.image_id}): expected Detections, got {type(dets).__name__}"
            )
        if not (len(dets.boxes) == len(dets.scores) == len(dets.labels)):
            raise BadInputError(
                f"predictions[{index}] ({sample.image_id}): {len(dets.boxes)} boxes, {len(dets.scores)} scores, "
                f"{len(dets.labels)} labels; they must be the same length"
            )
        if len(dets.labels) and (dets.labels.min() < 0 or dets.labels.max() >= num_classes):
            raise BadInputError(
                f"predictions[{index}] ({sample.image_id}): label outside 0..{num_classes - 1} "
                f"(the dataset has {num_classes} classes)"
            )
        if not (np.isfinite(dets.boxes).all() and np.isfinite(dets.scores).all()):
            raise BadInputError(f"predictions[{index}] ({sample.image_id}): non-finite box or score")
        if len(sample.labels) and sample.labels.max() >= num_classes:
            raise BadInputError(
                f"{sample.image_path}: ground-truth label {int(sample.labels.max())} outside the dataset's "
                f"{num_classes} classes"
            )
    return predictions
