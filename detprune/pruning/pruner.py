"""Structured channel pruning of a detector: scores in, a physically smaller model out.

The flow of :func:`prune_model`:

1. measure the model (params, FLOPs) on the adapter's example input;
2. enumerate the coupled channel groups (Torch-Pruning's dependency graph, with the
   adapter's protected layers locked): :mod:`detprune.pruning.groups`;
3. reduce per-layer scores to per-group scores and pick, per group, how many channels go
   (``allocation``: global, uniform or cost, :mod:`detprune.pruning.allocation`,
   :mod:`detprune.pruning.knapsack`) and which (the lowest-scored of the group), meeting a
   target by bisection on an analytic cost model: :mod:`detprune.pruning.targets`,
   :mod:`detprune.pruning.flops`. The widths may be allocated on another criterion's scores
   (``width_scores``) than the ones choosing the channels;
4. cut: each group through ``DependencyGraph.get_pruning_group(...).prune()``, so every
   coupled conv, norm, concat and residual branch shrinks together;
5. measure again and record what was removed, in original channel numbering, so the same
   cut can be replayed on a fresh copy (:func:`apply_removals`).

The model is pruned IN PLACE and returned in the result (deep-copy first to keep the
original). The same model, scores and settings give the same channels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.errors import DetpruneError
from detprune.pruning.allocation import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MIN_CHANNELS,
    DEFAULT_ROUND_TO,
    Limits,
    group_scores,
    plan_from_kept,
    removal_orders,
    select_channels,
)
from detprune.pruning.flops import Cost, CostModel, measure
from detprune.pruning.groups import ROOT_TYPES, CoupledGroups, enumerate_groups
from detprune.pruning.latency_table import LatencyCost
from detprune.pruning.policies import (
    AllocationContext,
    AllocationPolicy,
    check_normalisation,
    get_cost,
    resolve_allocation,
    target_metric,
)
from detprune.pruning.targets import DEFAULT_TOLERANCE, Target, check_fraction, make_target, search


@dataclass
class GroupRemoval:
    """What one group lost, in original channel numbering."""

    group: int
    root: str
    channels: list[int]  # removed output channels of the root conv
    layers: dict[str, list[int]]  # every conv whose output channels went with them

    def as_dict(self) -> dict:
        return {"group": self.group, "root": self.root, "channels": self.channels, "layers": self.layers}


@dataclass
class PruneResult:
    model: nn.Module  # the pruned model: the object passed in, pruned in place
    before: Cost
    after: Cost
    predicted: Cost  # what the cost model expected (equals ``after`` when it is exact)
    channels_before: dict[str, int]  # output channels of every conv, before and after
    channels_after: dict[str, int]
    removed: list[GroupRemoval]
    target: Target | None
    achieved: dict[str, float]  # flops / params kept fractions, channel ratio removed
    settings: dict
    num_groups: int
    num_prunable_groups: int
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Everything but the model, as plain JSON-able values."""
        return {
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "predicted": self.predicted.as_dict(),
            "target": None if self.target is None else {"kind": self.target.kind, "value": self.target.value},
            "achieved": self.achieved,
            "settings": self.settings,
            "groups": {"total": self.num_groups, "prunable": self.num_prunable_groups},
            "seconds": self.seconds,
            "channels": {
                name: {"before": self.channels_before[name], "after": self.channels_after.get(name, 0)}
                for name in self.channels_before
            },
            "removed": [r.as_dict() for r in self.removed],
        }


def trace_forward(adapter: DetectorAdapter, model: nn.Module):
    """The adapter's ``forward_fn`` for tracing and counting, if it has one (Faster R-CNN does:
    its eval forward detaches the RPN, so ``model(inputs)`` would hide the RPN head's coupling)."""
    return (adapter.dependency_graph_options(model) or {}).get("forward_fn")


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by qualified name."""
    return {
        name: int(getattr(m, "out_channels", getattr(m, "out_features", 0)))
        for name, m in model.named_modules()
        if isinstance(m, ROOT_TYPES)
    }


def prune_model(
    adapter: DetectorAdapter,
    model: nn.Module,
    scores: Mapping[str, torch.Tensor] | None = None,
    *,
    kept: Mapping[str, Sequence[int]] | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    ratio: float | None = None,
    target_latency: float | None = None,
    latency_table=None,
    allocation: str | AllocationPolicy | None = None,
    cost: str | None = None,
    width_scores: Mapping[str, torch.Tensor] | None = None,
    subsets=None,
    global_ranking: bool | None = None,
    round_to: int = DEFAULT_ROUND_TO,
    min_channels: int = DEFAULT_MIN_CHANNELS,
    max_ratio: float = DEFAULT_MAX_RATIO,
    limits: Limits | None = None,
    normalisation: str | None = None,
    imgsz: int | Sequence[int] = 320,
    tolerance: float = DEFAULT_TOLERANCE,
) -> PruneResult:
    """Prune ``model`` (in place) to a target, by per-channel ``scores`` or per-layer ``kept`` sets.

    ``scores``: {conv name: tensor, one score per output channel; higher = more important}.
    ``kept``: {conv name: output channels to keep}, for criteria that choose subsets; it
    replaces the target (give none). Exactly one of ``target_flops`` / ``target_params``
    (fractions KEPT) or ``ratio`` (fraction of channels REMOVED; 0 = no change) goes with
    ``scores``. ``model`` must be prepared (``adapter.prepare_for_pruning``).

    ``allocation``: how many channels each group keeps, a registered name or an
    :class:`~detprune.pruning.policies.AllocationPolicy`: ``global`` (default; one threshold on
    the normalised ranking), ``uniform`` (the same fraction of every group) or ``cost`` (a
    greedy knapsack on importance per unit of ``cost``: ``flops`` or ``params``, by default
    the kind of the target, FLOPs for a ratio). ``limits`` (a
    :class:`~detprune.pruning.allocation.Limits`) replaces ``round_to``, ``min_channels`` and
    ``max_ratio`` where given. ``global_ranking`` is the older switch
    (True = global, False = uniform). ``width_scores``: scores of another criterion to
    allocate the widths on; ``scores`` then only choose which channels of each group stay.
    ``subsets``: a criterion that chooses each group's channels jointly at the width the
    allocation gave it (``removed_positions(coupled, group, count)``, CATRO's trace-ratio
    subset) instead of by the ranking of ``scores``.

    ``latency_table`` (:class:`detprune.pruning.latency_table.LatencyTable` of this
    architecture) prices candidates by predicted latency: ``target_latency`` is the fraction of
    the predicted latency to keep, and ``cost="latency"`` the knapsack's cost (HALP).
    """
    if limits is None:
        limits = Limits(round_to=round_to, min_channels=min_channels, max_ratio=max_ratio)
    round_to, min_channels, max_ratio = limits.round_to, limits.min_channels, limits.max_ratio
    policy = resolve_allocation(allocation, global_ranking)
    allocation = policy.name
    normalisation = check_normalisation(normalisation or policy.normalisation)
    target = _target(ratio, target_flops, target_params, target_latency, latency_table)
    if kept is not None:
        if target is not None:
            raise DetpruneError(
                "kept channel sets fix the amount pruned: give no ratio or FLOPs/params target with them"
            )
    elif scores is None:
        raise DetpruneError("prune_model needs channel scores (or kept channel sets)")
    elif target is None:
        raise DetpruneError("give a target: ratio, target_flops or target_params")
    cost = policy.cost_kind(cost, target.kind if target is not None else None)
    if cost is not None and get_cost(cost).needs_latency_table and latency_table is None:
        raise DetpruneError("cost='latency' prices removals by a measured latency table: give latency_table")
    if width_scores is not None and kept is not None:
        raise DetpruneError("kept channel sets fix the widths: give no width_scores with them")

    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    example = adapter.example_inputs(model, imgsz)
    forward_fn = trace_forward(adapter, model)
    before = measure(model, example, forward_fn)
    channels_before = conv_channels(model)
    coupled = enumerate_groups(model, example, adapter.protected_layers(model), forward_fn)
    seconds["graph"] = time.perf_counter() - tick

    tick = time.perf_counter()
    gscores = group_scores(coupled, scores, normalisation) if scores is not None else None
    if kept is not None:
        plan = plan_from_kept(coupled, kept, limits, gscores)
        cost_model = CostModel(coupled, before, plan)
        removal = {g: len(p) for g, p in plan.items()}
        prunable = sum(g.size for g in coupled.groups if len(g.prunable))
    else:
        orders = removal_orders(coupled, gscores)
        # the widths are allocated on width_scores where given, the channels chosen by scores
        wscores = group_scores(coupled, width_scores, normalisation) if width_scores is not None else gscores
        worders = removal_orders(coupled, wscores) if width_scores is not None else orders
        cost_model = CostModel(coupled, before, worders)
        latency = None if latency_table is None else LatencyCost(latency_table, coupled, cost_model)
        allocator = policy.allocator(AllocationContext(coupled, wscores, worders, limits, cost_model, cost, latency))
        metric = target_metric(target.kind, before, cost_model, allocator, latency)
        hint = (
            f" with min_channels={min_channels}, max_ratio={max_ratio:g}, round_to={round_to}"
            " and the protected layers"
        )
        found = search(target, allocator.allocate, metric, tolerance=tolerance, limits_hint=hint)
        removal = found.removal
        plan = select_channels(orders, removal)
        prunable = allocator.prunable_channels
        if subsets is not None:  # the criterion's joint choice at each allocated width
            plan, orders = _subset_plan(coupled, subsets, removal, orders)
        if width_scores is not None or subsets is not None:  # price the channels actually chosen
            cost_model = CostModel(coupled, before, orders)
    predicted = cost_model.predict(removal)
    predicted_latency = None
    if latency_table is not None:  # priced before the cut, on the channels actually chosen
        predicted_latency = LatencyCost(latency_table, coupled, cost_model).fraction(removal)
    seconds["allocate"] = time.perf_counter() - tick

    tick = time.perf_counter()
    removed = apply_plan(coupled, plan)
    seconds["surgery"] = time.perf_counter() - tick
    after = measure(model, example, forward_fn)
    achieved = {
        "flops": after.macs / before.macs if before.macs else 1.0,
        "params": after.params / before.params if before.params else 1.0,
        "ratio": sum(removal.values()) / prunable if prunable else 0.0,
    }
    if predicted_latency is not None:
        achieved["latency"] = predicted_latency  # predicted by the table; measured only by the caller
    settings = {
        "allocation": None if kept is not None else allocation,
        "cost": cost if kept is None else None,
        "width_scores": width_scores is not None,
        "global_ranking": allocation == "global",
        "round_to": round_to,
        "min_channels": min_channels,
        "max_ratio": max_ratio,
        "normalisation": normalisation,
        "imgsz": imgsz,
        "tolerance": tolerance,
        "kept_sets": kept is not None,
        "subsets": None if subsets is None else getattr(subsets, "name", type(subsets).__name__),
        "latency_table": None if latency_table is None else latency_table.key,
    }
    return PruneResult(
        model=model,
        before=before,
        after=after,
        predicted=predicted,
        channels_before=channels_before,
        channels_after=conv_channels(model),
        removed=removed,
        target=target,
        achieved=achieved,
        settings=settings,
        num_groups=len(coupled.groups),
        num_prunable_groups=len(coupled.prunable_groups()),
        seconds=seconds,
    )


def _subset_plan(coupled, subsets, removal: Mapping[int, int], orders: Mapping[int, np.ndarray]):
    """(plan, orders): each group's removed positions from ``subsets``, and orders that list them first."""
    by_index = {g.index: g for g in coupled.groups}
    plan, new_orders = {}, dict(orders)
    for g, n in removal.items():
        if not n:
            plan[g] = np.zeros(0, dtype=np.int64)
            continue
        removed = np.asarray(subsets.removed_positions(coupled, by_index[g], int(n)), dtype=np.int64)
        if len(removed) != n or not set(removed.tolist()) <= set(by_index[g].prunable.tolist()):
            raise DetpruneError(
                f"group {g}: the subset criterion removed {len(removed)} channels, not {n} prunable ones"
            )
        plan[g] = removed
        new_orders[g] = np.concatenate([removed, np.setdiff1d(orders.get(g, by_index[g].prunable), removed)])
    return plan, new_orders


def _target(ratio, target_flops, target_params, target_latency, latency_table) -> Target | None:
    """The one target given; a latency target is a predicted-latency fraction and needs a table."""
    if target_latency is None:
        return make_target(ratio=ratio, target_flops=target_flops, target_params=target_params)
    if any(v is not None for v in (ratio, target_flops, target_params)):
        raise DetpruneError("give one target: target_latency with ratio, target_flops or target_params is two")
    if latency_table is None:
        raise DetpruneError("target_latency is predicted by a measured latency table: give latency_table")
    return Target("latency", check_fraction("target_latency", target_latency))


def apply_plan(coupled: CoupledGroups, plan: Mapping[int, np.ndarray]) -> list[GroupRemoval]:
    """Cut each group's ``plan`` positions through Torch-Pruning; return what went, per group.

    Every group's pruning ops (``DependencyGraph.get_pruning_group``) are derived first, on the
    uncut model, and executed afterwards with ``Group.prune``. Deriving them between cuts would
    read stale offsets: Torch-Pruning maps indices through slices and splits with the offsets
    seen at trace time, which an earlier cut may have shifted. Each op's indices are renumbered
    for the channels earlier cuts already took from its layer.
    """
    graph = coupled.graph
    widths = conv_channels(coupled.model)
    pending = []
    for g in coupled.groups:
        positions = np.asarray(plan.get(g.index, ()), dtype=np.int64)
        if not len(positions):
            continue
        if g.locked[positions].any():
            raise DetpruneError(f"internal: the plan removes locked channels of group {g.index} ({g.root})")
        module = coupled.module(g.root)
        pruner = graph.get_pruner_of_module(module)
        root_channels = sorted(g.channels[positions].tolist())
        pending.append(
            (g, positions, root_channels, graph.get_pruning_group(module, pruner.prune_out_channels, root_channels))
        )

    taken: dict[tuple[int, str], np.ndarray] = {}  # (module, side) -> indices cut so far, original numbering
    removals = []
    for g, positions, root_channels, tp_group in pending:
        renumbered = tp.dependency.Group()
        renumbered._DG = graph
        for item in tp_group.items:
            node = item.dep.target
            # what gets cut is the module (a reused one has a node per call); a cut nn.Parameter is
            # replaced by a new object, so parameters are followed by their node
            owner = node.module if isinstance(node.module, nn.Module) else node
            key = (id(owner), "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in")
            original = np.asarray(item.idxs, dtype=np.int64)
            before = taken.get(key, np.zeros(0, dtype=np.int64))
            renumbered.add_dep(item.dep, (original - np.searchsorted(before, original)).tolist())
            taken[key] = np.sort(np.concatenate([before, original]))
        renumbered.prune()
        layers = {}
        for m in g.members:
            hit = m.channels[np.isin(m.positions, positions)]
            if len(hit):
                layers[m.name] = np.unique(hit).tolist()
        removals.append(GroupRemoval(g.index, g.root, root_channels, layers))
    _check_widths(coupled.model, widths, removals)
    return removals


def _check_widths(model: nn.Module, widths: dict[str, int], removals: list[GroupRemoval]) -> None:
    """Every layer must have lost exactly the channels its groups removed, no more."""
    gone: dict[str, int] = {}
    for r in removals:
        for name, channels in r.layers.items():
            gone[name] = gone.get(name, 0) + len(channels)
    now = conv_channels(model)
    for name, width in widths.items():
        expected = width - gone.get(name, 0)
        if now[name] != expected:
            raise DetpruneError(
                f"internal: layer {name} has {now[name]} output channels after the cut, expected {expected}"
            )


def apply_removals(
    adapter: DetectorAdapter,
    model: nn.Module,
    removed: Sequence[GroupRemoval | Mapping],
    imgsz: int | Sequence[int] = 320,
) -> CoupledGroups:
    """Replay a recorded cut (``PruneResult.removed`` or its JSON form) on a fresh prepared model."""
    coupled = enumerate_groups(
        model, adapter.example_inputs(model, imgsz), adapter.protected_layers(model), trace_forward(adapter, model)
    )
    by_root = {g.root: g for g in coupled.groups}
    plan = {}
    for record in removed:
        root, channels = (
            (record.root, record.channels) if isinstance(record, GroupRemoval) else (record["root"], record["channels"])
        )
        group = by_root.get(root)
        if group is None:
            raise DetpruneError(f"recorded cut names group root {root!r}, which this model does not have")
        position = {int(c): p for p, c in enumerate(group.channels.tolist())}
        missing = [c for c in channels if int(c) not in position]
        if missing:
            raise DetpruneError(f"recorded cut removes channels {missing[:5]} of {root}, outside its group")
        plan[group.index] = np.array(sorted(position[int(c)] for c in channels), dtype=np.int64)
    apply_plan(coupled, plan)
    return coupled
