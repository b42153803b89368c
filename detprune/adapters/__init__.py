"""Adapters: the family interface and registry (:mod:`detprune.adapters.base`) and one package
per detector family (:mod:`detprune.adapters.yolo`, :mod:`detprune.adapters.rcnn`)."""

from __future__ import annotations

from detprune.adapters.base import (
    FAMILIES,
    DetectorAdapter,
    FinetuneOptions,
    adapter_class,
    adapter_for_model,
    resuming_adapter,
    families,
    get_adapter,
    register_family,
)

__all__ = [
    "FAMILIES",
    "DetectorAdapter",
    "FinetuneOptions",
    "adapter_class",
    "adapter_for_model",
    "resuming_adapter",
    "families",
    "get_adapter",
    "register_family",
]
