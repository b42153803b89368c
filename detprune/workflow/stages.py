"""Stages shared by ``detprune prune`` and the demo: score on a subset, fine-tune a variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from detprune.adapters.base import DetectorAdapter
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


# family-neutral option names -> the names each family's trainer takes. val_every_epoch=False
# (YOLO): validate after the last epoch only, so the last epoch is returned, not one picked on val
_FINETUNE_NAMES = {"yolo": {"lr": "lr0", "val_every_epoch": "val"}, "rcnn": {"batch": "batch_size"}}


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

    YOLO trains through ultralytics, which reads a YOLO dataset: it is written from the
    splits into ``out_dir/dataset`` first. Returns the best model, pruned shapes kept.
    With ``teacher`` (the unpruned model) the trainer distils from it, ``distill_weight``
    scaling that loss (the family's default when None). ``label`` names YOLO's epoch bar
    (e.g. "baseline epochs" for training from scratch).
    """
    out_dir = Path(out_dir)
    options = {_FINETUNE_NAMES.get(adapter.family, {}).get(k, k): v for k, v in options.items() if v is not None}
    if teacher is not None:
        options.update(teacher=teacher, distill_weight=distill_weight)
    if adapter.family == "yolo":
        from detprune.data.convert import write_yolo_dataset

        data: Any = write_yolo_dataset(train, val, out_dir / "dataset")
        options.setdefault("exist_ok", True)
        if options.get("imgsz") is not None:  # ultralytics trains at one size: the long side of H,W
            from detprune.workflow.imgsz import train_side

            options["imgsz"] = train_side(options["imgsz"])
        if label:
            options["progress_label"] = label
    else:
        data = {"train": train, "val": val}
    return adapter.finetune(model, data, epochs=epochs, out_dir=out_dir / "finetune", **options)
