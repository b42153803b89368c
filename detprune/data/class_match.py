"""Matching a model's classes with a dataset's by name, never by index alone.

A detector's label ``i`` means its ``i``-th class name. Scoring it on data whose ``i``-th class
is another name (COCO's person/bicycle/car against a Car/Pedestrian/Cyclist model) measures
nothing, silently. So the names are compared, case-insensitively: the same names in the same
order pass; the same names in another order renumber the data's labels to the model's order
(said in one line); anything else is a one-line error naming both lists.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import numpy as np

from detprune.data.types import DetectionSet, Sample
from detprune.errors import DetpruneError


def _say(message: str) -> None:
    print(f"detprune: {message}", file=sys.stderr, flush=True)


def class_order(model_names: Sequence[str], data_names: Sequence[str]) -> list[int] | None:
    """None where the names agree in order; else ``order[data label] = model label``.

    Raises :class:`DetpruneError` naming both lists where they are not the same set of names.
    """
    model_keys = [str(n).lower() for n in model_names]
    data_keys = [str(n).lower() for n in data_names]
    if model_keys == data_keys:
        return None
    if sorted(model_keys) != sorted(data_keys) or len(set(model_keys)) != len(model_keys):
        raise DetpruneError(
            f"the model's classes ({', '.join(map(str, model_names))}) are not the data's "
            f"({', '.join(map(str, data_names))}); classes are matched by name, so give a --class-map "
            "that names the data's classes as the model does"
        )
    return [model_keys.index(key) for key in data_keys]


def align_classes(
    dataset: DetectionSet, model_names: Sequence[str], *, notify: Callable[[str], None] | None = _say
) -> DetectionSet:
    """``dataset`` with its labels numbered as ``model_names`` number the same classes.

    Returns ``dataset`` itself where the orders agree, else a renumbered copy (class names
    keep the data's spelling, in the model's order); the input is not modified.
    """
    order = class_order(model_names, dataset.class_names)
    if order is None:
        return dataset
    if notify is not None:
        notify(f"the data's classes ({', '.join(dataset.class_names)}) are the model's "
               f"({', '.join(map(str, model_names))}) in another order: labels matched by name")
    lookup = np.asarray(order, np.int64)
    names = [""] * len(order)
    for data_label, model_label in enumerate(order):
        names[model_label] = dataset.class_names[data_label]
    samples = [
        Sample(s.image_path, s.width, s.height, s.boxes, np.where(s.labels >= 0, lookup[s.labels.clip(0)], s.labels),
               s.ignore, s.truncation, s.occlusion, s.source)
        for s in dataset.samples
    ]
    return DetectionSet(names, samples, name=dataset.name, skipped=dataset.skipped, deviation=dataset.deviation)
