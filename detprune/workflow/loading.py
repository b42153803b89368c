"""A model loaded for a dataset: its classes and the data's matched by name, in one place.

An architecture (a yaml or a name) is built with the data's classes, so there is nothing to
match. A trained model file keeps its classes: the data's labels are renumbered to the model's
order where the names are the same set (:func:`~detprune.data.class_match.align_classes`),
and anything else is an error, unless ``rehead`` allows a model with another number of
classes to be given fresh class predictors for the data (pruning before fine-tuning does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.data.class_match import align_classes
from detprune.data.types import DetectionSet

TRAINED_SUFFIXES = (".pt", ".pth")


def is_trained_file(spec: str | Path) -> bool:
    """Whether ``spec`` is a weights-bearing model file (its classes are what it was trained on)."""
    path = Path(spec)
    return path.suffix.lower() in TRAINED_SUFFIXES and path.is_file()


def load_for_data(
    adapter: DetectorAdapter,
    spec: str | Path,
    dataset: DetectionSet | None,
    *,
    weights: str | Path | None = None,
    rehead: bool = False,
) -> tuple[nn.Module, Any]:
    """(model, dataset with labels in the model's class order) through ``adapter.load``."""
    if dataset is None or not is_trained_file(spec):
        names = dataset.class_names if dataset is not None else None
        return adapter.load(spec, weights=weights, class_names=names), dataset
    model = adapter.load(spec, weights=weights)
    own = adapter.class_names(model)
    if rehead and len(own) != len(dataset.class_names):  # a new class set: fresh class predictors
        return adapter.load(spec, weights=weights, class_names=dataset.class_names), dataset
    return model, align_classes(dataset, own)


def align_to_model(adapter: DetectorAdapter, model: nn.Module, dataset: DetectionSet) -> DetectionSet:
    """``dataset`` renumbered to ``model``'s classes (or a one-line error where they differ)."""
    return align_classes(dataset, adapter.class_names(model))
