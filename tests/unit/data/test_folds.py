"""k-fold splits: a partition of the images, seeded, near-equal folds, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from detprune.data.folds import fold_indices, kfold_splits
from detprune.data.types import DetectionSet, Sample
from detprune.errors import BadInputError


def toy_set(n: int) -> DetectionSet:
    samples = [Sample(image_path=Path(f"{i:06d}.png"), width=10, height=10) for i in range(n)]
    return DetectionSet(["Car"], samples)


@pytest.mark.parametrize("n,k", [(75, 5), (75, 3), (10, 3), (7, 7)])
def test_every_index_in_exactly_one_fold(n, k):
    folds = fold_indices(n, k, seed=0)
    assert len(folds) == k
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(n))  # a partition: no index twice, none missing
    sizes = sorted(len(f) for f in folds)
    assert sizes[-1] - sizes[0] <= 1  # 10 into 3 -> 4, 3, 3
    assert all(fold == sorted(fold) for fold in folds)


def test_seeded_same_seed_same_folds_other_seed_other_folds():
    assert fold_indices(75, 5, seed=3) == fold_indices(75, 5, seed=3)
    assert fold_indices(75, 5, seed=3) != fold_indices(75, 5, seed=4)


def test_folds_are_shuffled_not_contiguous():
    # a permutation of 75 that leaves every 25-image fold a contiguous run has probability ~1e-20
    assert fold_indices(75, 3, seed=0) != [list(range(0, 25)), list(range(25, 50)), list(range(50, 75))]


def test_kfold_splits_train_is_the_complement():
    dataset = toy_set(11)
    splits = kfold_splits(dataset, 4, seed=1)
    held_out = []
    for train, val in splits:
        train_ids, val_ids = [s.image_id for s in train], [s.image_id for s in val]
        assert not set(train_ids) & set(val_ids)
        assert sorted(train_ids + val_ids) == [s.image_id for s in dataset]
        assert train_ids == sorted(train_ids)  # dataset order kept
        held_out += val_ids
    assert sorted(held_out) == [s.image_id for s in dataset]
    assert train.class_names == dataset.class_names


@pytest.mark.parametrize("k", [1, 0, 12, True, 2.5])
def test_bad_fold_counts_are_one_line_errors(k):
    with pytest.raises(BadInputError, match="fold"):
        fold_indices(11, k)


def test_kitti_tiny_three_folds_of_25(kitti_tiny):
    from detprune.data.loader import load_dataset

    dataset = load_dataset(kitti_tiny)
    splits = kfold_splits(dataset, 3, seed=0)
    assert [len(val) for _, val in splits] == [25, 25, 25]
    assert sorted(s.image_id for _, val in splits for s in val) == sorted(s.image_id for s in dataset)
