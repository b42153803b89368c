"""Criterion and allocation tokens of a benchmark grid, and the options each criterion is given.

A criterion token is ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE]`` (``catro:ridge=0``); an allocation
token is ``global``, ``uniform``, ``cost``, ``latency`` or ``widths:CRITERION-ALLOCATION`` (the
widths another criterion gets under that allocation).
"""

from __future__ import annotations

import inspect
from typing import Callable

from detprune.errors import DetpruneError

# CAR evaluates the held-out images once per masked channel: a sampled, cheap configuration so one
# fold's scoring takes minutes at 640x224 on CPU (the loss-increase proxy, not mAP)
CAR_OPTIONS = {"metric": "loss", "max_channels_per_layer": 4}

WIDTHS_PREFIX = "widths:"


def accepts(function: Callable, name: str) -> bool:
    """Whether ``function`` takes a parameter ``name`` (features that land in detprune over time)."""
    return name in inspect.signature(function).parameters


def criterion_parameters(name: str) -> set[str]:
    """The keyword arguments criterion ``name``'s constructor takes."""
    from detprune.criteria import get_criterion

    return set(inspect.signature(type(get_criterion(name)).__init__).parameters)


def split_criterion(token: str) -> tuple[str, dict]:
    """(criterion, its options): "catro:ridge=0" -> ("catro", {"ridge": 0}); "l1" -> ("l1", {})."""
    from detprune.criteria.base import parse_options

    name, *pairs = token.split(":")
    return name, parse_options(pairs)


def criterion_options(token: str, seed: int, class_weights: dict[str, float] | None = None) -> dict:
    """The options the benchmark gives criterion ``token`` ("NAME" or "NAME:KEY=VALUE:..."): the
    token's own, over the seed, no progress bar, CAR's sampling and the class weights."""
    name, own = split_criterion(token)
    accepted = criterion_parameters(name)
    unknown = sorted(set(own) - accepted)
    if unknown:
        raise DetpruneError(f"criterion {token!r}: {name} has no option {', '.join(unknown)}")
    options = {"seed": seed, "progress": False, **(CAR_OPTIONS if name == "car" else {})}
    if class_weights:
        options["class_weights"] = class_weights
    return {**{k: v for k, v in options.items() if k in accepted}, **own}


def split_allocation(token: str) -> tuple[str, str | None]:
    """(allocation, criterion the widths come from or None): "widths:saliency-global" -> ("global", "saliency")."""
    if not token.startswith(WIDTHS_PREFIX):
        return token, None
    criterion, _, allocation = token[len(WIDTHS_PREFIX):].partition("-")
    return allocation or "global", criterion


def allocation_label(token: str) -> str:
    """How a table names an allocation: "widths:saliency-global" -> "widths of saliency-global"."""
    return f"widths of {token[len(WIDTHS_PREFIX):]}" if token.startswith(WIDTHS_PREFIX) else token
