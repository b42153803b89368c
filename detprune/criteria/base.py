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
    # Whether the criterion chooses each group's kept channels jointly at a given width
    # (``removed_positions(coupled, group, count)``, CATRO's trace-ratio subset) rather than by
    # its per-channel ranking: the prune run then lets it pick the channels at widths it did not
    # allocate itself (--widths-from, the uniform allocation).
    joint_subsets: ClassVar[bool] = False

    @abstractmethod
    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        """Score every output channel of every layer in ``adapter.activation_points(model)``."""

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The options this criterion takes: its constructor's keywords (the one place they are read)."""
        import inspect

        return frozenset(inspect.signature(cls.__init__).parameters) - {"self"}


_REGISTRY: dict[str, type[Criterion]] = {}
# modules that register criteria when imported
_MODULES = (
    "detprune.criteria.car",
    "detprune.criteria.catro",
    "detprune.criteria.magnitude",
    "detprune.criteria.random",
    "detprune.criteria.saliency",
    "detprune.criteria.snip",
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


def criterion_class(name: str) -> type[Criterion]:
    """The registered class of ``name`` (its options: :meth:`Criterion.option_names`)."""
    _load_all()
    if name not in _REGISTRY:
        raise DetpruneError(f"unknown criterion {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_criterion(name: str, **options) -> Criterion:
    return criterion_class(name)(**options)


def parse_options(pairs: list[str] | None) -> dict:
    """``["max_channels_per_layer=4", "metric=map"]`` -> a dict, values read as YAML scalars."""
    import yaml

    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DetpruneError(f"criterion option {pair!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    return options


def build_criterion(name: str, options: dict | None = None, defaults: dict | None = None) -> Criterion:
    """The criterion ``name`` with ``options`` (each must be a keyword it takes) and ``defaults``
    (such as ``seed``, ``progress``: passed only where it takes them)."""
    accepted = criterion_class(name).option_names()
    unknown = sorted(set(options or {}) - accepted)
    if unknown:
        raise DetpruneError(
            f"criterion {name!r} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted)) or 'none'}"
        )
    merged = {k: v for k, v in (defaults or {}).items() if k in accepted}
    return get_criterion(name, **{**merged, **(options or {})})
