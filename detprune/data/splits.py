"""A seeded hold-out split: train, a tuning split carved from train, and val.

Every hyperparameter (distillation weight, epochs, learning rate, criterion options) is chosen
on the tuning split; val is read once, for the figures reported. Frames are drawn by a seeded
permutation, so the same ``(frames, sizes, seed)`` always gives the same three lists, each in
the dataset's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detprune.data.types import DetectionSet
from detprune.errors import BadInputError


@dataclass(frozen=True)
class HoldoutSplit:
    """``fit``: the frames trained on; ``tune``: carved from train, for choices; ``val``: for the figures."""

    fit: DetectionSet
    tune: DetectionSet
    val: DetectionSet

    @property
    def train(self) -> DetectionSet:
        """All of train: the frames fitted plus the tuning frames carved from them."""
        merged = sorted([*self.fit.samples, *self.tune.samples], key=lambda s: s.image_id)
        return DetectionSet(self.fit.class_names, merged, self.fit.name, self.fit.skipped, self.fit.deviation)

    def ids(self) -> dict[str, list[str]]:
        return {name: [s.image_id for s in part] for name, part in
                (("fit", self.fit), ("tune", self.tune), ("val", self.val))}


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BadInputError(f"{name} must be a whole number of frames, got {value!r}")
    return int(value)


def holdout_split(dataset: DetectionSet, *, val: int, tune: int, seed: int = 0) -> HoldoutSplit:
    """``val`` frames for the figures, ``tune`` frames for choices, every other frame to fit on."""
    n_val, n_tune = _count("val", val), _count("tune", tune)
    n = len(dataset)
    if n_val < 1:
        raise BadInputError(f"a split needs at least 1 val frame, got {n_val}")
    if n_tune < 0:
        raise BadInputError(f"tune must be >= 0 frames, got {n_tune}")
    if n_val + n_tune >= n:
        raise BadInputError(f"cannot take {n_val} val and {n_tune} tuning frames from {n}: nothing left to train on")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = sorted(int(i) for i in order[:n_val])
    tune_idx = sorted(int(i) for i in order[n_val:n_val + n_tune])
    fit_idx = sorted(int(i) for i in order[n_val + n_tune:])
    return HoldoutSplit(dataset.subset(fit_idx), dataset.subset(tune_idx), dataset.subset(val_idx))
