"""Fine-tuning that keeps the pruned structure: the ultralytics trainer receives the pruned module.

``finetune_yolo`` (in :mod:`detprune.train.yolo_trainer`) is the entry point; it is imported on
first use so that ``import detprune.train`` does not import ultralytics.
"""

from __future__ import annotations

import importlib

_API = {
    "finetune_yolo": "detprune.train.yolo_trainer",
    "FinetuneResult": "detprune.train.yolo_trainer",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'detprune.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
