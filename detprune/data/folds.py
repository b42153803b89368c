"""k-fold cross-validation splits: every image lands in exactly one validation fold.

With a set as small as kitti_tiny (75 frames) one fixed 15-frame validation split carries
several points of sampling noise; holding each frame out once and averaging over the folds
measures every model on all the frames, and the spread over folds says how far to trust it.
"""

from __future__ import annotations

import numpy as np

from detprune.data.types import DetectionSet
from detprune.errors import BadInputError


def fold_indices(n: int, k: int, seed: int = 0) -> list[list[int]]:
    """``k`` validation folds over ``range(n)``: a seeded permutation cut into near-equal parts.

    Fold sizes differ by at most one (the first ``n % k`` folds take the extra image); each
    fold is sorted. The same ``(n, k, seed)`` always gives the same folds.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise BadInputError(f"k-fold needs at least 2 folds, got {k!r}")
    if k > n:
        raise BadInputError(f"cannot cut {n} images into {k} folds: every fold needs at least one image")
    return seeded_partition(n, k, seed)


def seeded_partition(n: int, parts: int, seed: int) -> list[list[int]]:
    """``range(n)`` as ``parts`` sorted parts of a seeded permutation, sizes differing by at most one."""
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(order, parts)]


def kfold_splits(dataset: DetectionSet, k: int, seed: int = 0) -> list[tuple[DetectionSet, DetectionSet]]:
    """``[(train, val), ...]`` for each of the ``k`` folds; val is the fold, train the rest (dataset order)."""
    folds = fold_indices(len(dataset), k, seed)
    splits = []
    for fold in folds:
        held_out = set(fold)
        train = dataset.subset([i for i in range(len(dataset)) if i not in held_out])
        splits.append((train, dataset.subset(fold)))
    return splits
