"""Stages shared by ``detprune prune`` and the demo: score on a subset, fine-tune a variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from detprune.adapters.base import DetectorAdapter, FinetuneOptions
from detprune.data.types import DetectionSet
from detprune.errors import DetpruneError


def seeded_subset(dataset: DetectionSet, count: int | None, seed: int) -> DetectionSet:
    """``count`` images chosen by ``seed``, in dataset order (all of them when ``count`` is None)."""
    if count is None or count >= len(dataset):
        return dataset
    chosen = np.random.default_rng(seed).choice(len(dataset), count, replace=False)
    return dataset.subset(sorted(int(i) for i in chosen))


def score_channels(
    adapter: DetectorAdapter,
    model: nn.Module,
    dataset: DetectionSet | None,
    criterion,
    *,
    imgsz: int | Sequence[int],
    batch_size: int,
    **options: Any,
) -> dict:
    """{conv name: score per output channel} from ``criterion`` (a name, built with ``options``,
    or a criterion object, which then keeps what it measured; data-free ones ignore ``dataset``)."""
    from detprune.criteria import get_criterion
    from detprune.data.batch import iter_batches

    scorer = get_criterion(criterion, **options) if isinstance(criterion, str) else criterion
    if scorer.needs_data and dataset is None:
        raise DetpruneError(f"criterion {criterion!r} scores on images: give a dataset")
    batches = iter_batches(dataset, imgsz, batch_size) if scorer.needs_data else iter(())
    return scorer.score(adapter, model, batches)


def finetune_variant(
    adapter: DetectorAdapter,
    model: nn.Module,
    train: DetectionSet,
    val: DetectionSet,
    *,
    epochs: int,
    out_dir: str | Path,
    teacher: nn.Module | None = None,
    distill_weight: float | None = None,
    label: str | None = None,
    **options: Any,
) -> nn.Module:
    """Fine-tune ``model`` on ``train`` (validated on ``val``) with the family's own trainer.

    The family writes what its trainer reads from the splits (YOLO: a dataset under
    ``out_dir/dataset``) and maps the neutral option names onto its trainer's
    (:meth:`DetectorAdapter.finetune_splits`). Returns the best model, pruned shapes kept.
    With ``teacher`` (the unpruned model) the trainer distils from it, ``distill_weight``
    scaling that loss (the family's default when None). ``label`` names the epoch display
    (e.g. "baseline epochs" for training from scratch). ``val_every_epoch=False``: validate
    after the last epoch only, so the last epoch is returned, not one picked on val.
    """
    settings = FinetuneOptions.from_dict(
        {**options, "teacher": teacher, "distill_weight": distill_weight if teacher is not None else None,
         "label": label})
    return adapter.finetune_splits(model, train, val, epochs=epochs, out_dir=out_dir, options=settings)
