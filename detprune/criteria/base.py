"""The criterion interface: (adapter, model, batches) -> a score per output channel.

Scores are keyed by the prunable conv's qualified name (``model.named_modules()``), one
float64 tensor of length ``out_channels`` each; higher means more important. The pruner
reduces them to one score per coupled group.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import ClassVar, Iterable

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.data.batch import Batch
from detprune.errors import DetpruneError

ChannelScores = dict[str, torch.Tensor]


class Criterion(ABC):
    name: ClassVar[str]
    needs_data: ClassVar[bool] = True

    @abstractmethod
    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        """Score every output channel of every layer in ``adapter.activation_points(model)``."""


_REGISTRY: dict[str, type[Criterion]] = {}
# modules that register criteria when imported
_MODULES = (
    "detprune.criteria.car",
    "detprune.criteria.catro",
    "detprune.criteria.magnitude",
    "detprune.criteria.random",
    "detprune.criteria.saliency",
    "detprune.criteria.taylor",
)


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a real missing dependency, not an unwritten module
                raise


def available_criteria() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_criterion(name: str, **options) -> Criterion:
    _load_all()
    if name not in _REGISTRY:
        raise DetpruneError(f"unknown criterion {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)
