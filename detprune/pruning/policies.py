"""Pruning policies as small registered objects: allocations, costs and target metrics.

:func:`detprune.pruning.prune_model` takes an allocation by name or as an object; the CLI's
choices come from :func:`allocation_names`, :func:`cost_names` and :func:`target_kinds`.

* An **allocation** decides how many channels each coupled group loses for one scalar
  ``amount`` in [0, 1] (the target search bisects on it). It owns the per-layer score
  normalisation it ranks on (:attr:`AllocationPolicy.normalisation`) and says whether it spends
  a cost. Built in: ``global`` (one threshold on the network-wide ranking), ``uniform`` (the
  same fraction of every group), ``cost`` (a greedy knapsack on importance per unit of cost).
* A **cost** prices a removal for the ``cost`` allocation's knapsack: ``flops`` and ``params``
  from the analytic cost model, ``latency`` from a measured latency table.
* A **target metric** turns a removal into the number a target names (``ratio``, ``flops``,
  ``params``, ``latency``); the search meets the target on it.
* **Limits** (:class:`detprune.pruning.allocation.Limits`) bound every group's width.

A new allocation is one class::

    @register_allocation
    class Mine(AllocationPolicy):
        name = "mine"
        def allocator(self, context): ...   # an object with allocate(amount), removed_fraction, prunable_channels
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol

import numpy as np

from detprune.errors import DetpruneError
from detprune.pruning.allocation import NORMALISATIONS, Allocator, Limits
from detprune.pruning.groups import CoupledGroups
from detprune.pruning.knapsack import AnalyticCost, GroupCost, KnapsackAllocator


class WidthAllocator(Protocol):
    """What an allocation policy builds: ``amount`` in [0, 1] -> channels removed per group."""

    prunable_channels: int

    def allocate(self, amount: float) -> dict[int, int]: ...

    def removed_fraction(self, removal: Mapping[int, int]) -> float: ...


@dataclass
class AllocationContext:
    """Everything an allocation may read: the groups, their scores and removal orders, the limits,
    the analytic cost model, the cost to spend (a ``cost`` allocation) and a latency pricing."""

    coupled: CoupledGroups
    scores: Mapping[int, np.ndarray]
    orders: Mapping[int, np.ndarray]
    limits: Limits
    cost_model: Any
    cost: str | None = None
    latency: GroupCost | None = None


# --- allocations -------------------------------------------------------------------------------
_ALLOCATIONS: dict[str, type["AllocationPolicy"]] = {}


class AllocationPolicy(ABC):
    """How many channels each group keeps."""

    name: ClassVar[str]
    # the per-layer score normalisation this allocation ranks on when none is given
    normalisation: ClassVar[str] = "l2"
    # whether it spends a cost (``cost=`` applies to it)
    uses_cost: ClassVar[bool] = False

    @abstractmethod
    def allocator(self, context: AllocationContext) -> WidthAllocator:
        """The allocator for one model's groups."""

    def cost_kind(self, cost: str | None, target_kind: str | None) -> str | None:
        """The cost this allocation spends: none unless :attr:`uses_cost`."""
        if cost is not None and cost not in _COSTS:
            raise DetpruneError(f"unknown cost {cost!r}; choose from {', '.join(_COSTS)}")
        if cost is not None:
            raise DetpruneError(f"cost={cost!r} applies to allocation='cost' only (got allocation={self.name!r})")
        return None


def register_allocation(cls: type[AllocationPolicy]) -> type[AllocationPolicy]:
    """Class decorator: make ``cls`` available as ``allocation=cls.name``."""
    _ALLOCATIONS[cls.name] = cls
    return cls


def allocation_names() -> tuple[str, ...]:
    """The registered allocation names (the CLI's ``--allocation`` choices)."""
    return tuple(_ALLOCATIONS)


def get_allocation(allocation: str | AllocationPolicy) -> AllocationPolicy:
    if isinstance(allocation, AllocationPolicy):
        return allocation
    if allocation not in _ALLOCATIONS:
        raise DetpruneError(f"unknown allocation {allocation!r}; choose from {', '.join(_ALLOCATIONS)}")
    return _ALLOCATIONS[allocation]()


def resolve_allocation(
    allocation: str | AllocationPolicy | None, global_ranking: bool | None = None
) -> AllocationPolicy:
    """The allocation by name or object; ``global_ranking`` (the older switch) maps True to
    global, False to uniform."""
    legacy = None if global_ranking is None else ("global" if global_ranking else "uniform")
    if allocation is None:
        return get_allocation(legacy or "global")
    policy = get_allocation(allocation)
    if legacy is not None and legacy != policy.name:
        raise DetpruneError(
            f"allocation={policy.name!r} contradicts global_ranking={global_ranking}; give allocation alone"
        )
    return policy


def default_normalisation(allocation: str | AllocationPolicy) -> str:
    """The normalisation an allocation ranks on: ``none`` for the cost allocation, ``l2`` for the others.

    The knapsack weighs a channel's importance against what it costs, so the importance must
    keep its own scale: a data-driven score (saliency, Taylor) is a change of the detection
    utility, which compares across layers as it is. Normalised per layer, the thin, costly
    early layers score like the wide cheap ones and the knapsack cuts them to the floor first
    (measured on the k-fold KITTI baseline at 50% FLOPs: 0.0 mAP50 before fine-tuning with
    ``l2``, 10.4 with ``none``, against 10.1 for the global ranking; docs/benchmarks.md).
    """
    return get_allocation(allocation).normalisation


def check_normalisation(normalisation: str) -> str:
    if normalisation not in NORMALISATIONS:
        raise DetpruneError(f"unknown normalisation {normalisation!r}; choose from {', '.join(NORMALISATIONS)}")
    return normalisation


@register_allocation
class GlobalAllocation(AllocationPolicy):
    """The lowest ``amount`` of the network-wide ranking goes (one threshold)."""

    name = "global"

    def allocator(self, context: AllocationContext) -> WidthAllocator:
        return Allocator(context.coupled, context.scores, context.orders, context.limits, global_ranking=True)


@register_allocation
class UniformAllocation(AllocationPolicy):
    """Every group loses the same fraction, up to rounding."""

    name = "uniform"

    def allocator(self, context: AllocationContext) -> WidthAllocator:
        return Allocator(context.coupled, context.scores, context.orders, context.limits, global_ranking=False)


@register_allocation
class CostAllocation(AllocationPolicy):
    """A greedy knapsack: the blocks that lose the least importance per unit of cost go first."""

    name = "cost"
    normalisation = "none"
    uses_cost = True

    def cost_kind(self, cost: str | None, target_kind: str | None) -> str:
        if cost is not None and cost not in _COSTS:
            raise DetpruneError(f"unknown cost {cost!r}; choose from {', '.join(_COSTS)}")
        return cost or (target_kind if target_kind in _COSTS else "flops")

    def allocator(self, context: AllocationContext) -> WidthAllocator:
        priced = get_cost(context.cost or "flops").price(context)
        return KnapsackAllocator(context.coupled, context.scores, context.orders, context.limits, priced)


# --- costs -------------------------------------------------------------------------------------
_COSTS: dict[str, type["CostPolicy"]] = {}


class CostPolicy(ABC):
    """What the ``cost`` allocation's knapsack spends."""

    name: ClassVar[str]
    needs_latency_table: ClassVar[bool] = False

    @abstractmethod
    def price(self, context: AllocationContext) -> GroupCost:
        """The pricing of removals for this model."""


def register_cost(cls: type[CostPolicy]) -> type[CostPolicy]:
    _COSTS[cls.name] = cls
    return cls


def cost_names() -> tuple[str, ...]:
    """The registered cost names (the CLI's ``--cost`` choices)."""
    return tuple(_COSTS)


def get_cost(name: str) -> CostPolicy:
    if name not in _COSTS:
        raise DetpruneError(f"unknown cost {name!r}; choose from {', '.join(_COSTS)}")
    return _COSTS[name]()


@register_cost
class FlopsCost(CostPolicy):
    name = "flops"

    def price(self, context: AllocationContext) -> GroupCost:
        return AnalyticCost(context.cost_model, "flops")


@register_cost
class ParamsCost(CostPolicy):
    name = "params"

    def price(self, context: AllocationContext) -> GroupCost:
        return AnalyticCost(context.cost_model, "params")


@register_cost
class LatencyTableCost(CostPolicy):
    """Predicted latency from a measured table (:class:`detprune.pruning.latency_table.LatencyCost`)."""

    name = "latency"
    needs_latency_table = True

    def price(self, context: AllocationContext) -> GroupCost:
        if context.latency is None:
            raise DetpruneError("cost='latency' prices removals by a measured latency table: give latency_table")
        return context.latency


# --- target metrics ----------------------------------------------------------------------------
_TARGETS: dict[str, type["TargetMetric"]] = {}


class TargetMetric(ABC):
    """The number a target of this kind names, for a candidate removal."""

    kind: ClassVar[str]

    @abstractmethod
    def metric(
        self, before, cost_model, allocator: WidthAllocator, latency=None
    ) -> Callable[[Mapping[int, int]], float]:
        """``removal -> value`` (monotone in the allocation's amount)."""


def register_target(cls: type[TargetMetric]) -> type[TargetMetric]:
    _TARGETS[cls.kind] = cls
    return cls


def target_kinds() -> tuple[str, ...]:
    return tuple(_TARGETS)


def target_metric(kind: str, before, cost_model, allocator: WidthAllocator, latency=None):
    if kind not in _TARGETS:
        raise DetpruneError(f"unknown target kind {kind!r}; choose from {', '.join(_TARGETS)}")
    return _TARGETS[kind]().metric(before, cost_model, allocator, latency)


@register_target
class RatioTarget(TargetMetric):
    """The fraction of prunable channels removed."""

    kind = "ratio"

    def metric(self, before, cost_model, allocator, latency=None):
        return allocator.removed_fraction


@register_target
class FlopsTarget(TargetMetric):
    """The fraction of the original FLOPs kept."""

    kind = "flops"

    def metric(self, before, cost_model, allocator, latency=None):
        return lambda removal: cost_model.predict(removal).macs / before.macs


@register_target
class ParamsTarget(TargetMetric):
    """The fraction of the original parameters kept."""

    kind = "params"

    def metric(self, before, cost_model, allocator, latency=None):
        return lambda removal: cost_model.predict(removal).params / before.params


@register_target
class LatencyTarget(TargetMetric):
    """The fraction of the predicted latency kept (a measured table)."""

    kind = "latency"

    def metric(self, before, cost_model, allocator, latency=None):
        return latency.fraction
