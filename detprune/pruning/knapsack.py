"""Cost-aware allocation: per-group widths that keep the most importance per unit of cost.

A greedy knapsack in the spirit of HALP (Shen, Molchanov, Yin, Alvarez, Kautz, "Structural
Pruning via Latency-Saliency Knapsack", NeurIPS 2022), which chooses the channels to keep by a
knapsack on importance and per-layer latency. Here the cost is the FLOPs or the parameters of
the pruner's analytic cost model (:class:`detprune.pruning.flops.CostModel`, exact for the cut
model); anything that prices a removal, such as a measured latency table, can stand in for it
through :class:`GroupCost`.

The walk: from the full model, repeatedly remove the block of channels (one rounding step of
one group, the least important channels of its order) whose importance per unit of cost
saved is lowest. A channel's cost depends on its neighbours' widths (a conv's MACs are
``k*k * c_in * c_out * H * W``), so after each removal the saving of every group sharing a
node with the shrunk one is priced again; the others keep theirs. The walk runs until every
group sits at its smallest allowed width and gives one ordered path of removals; a target is
met by bisection over the path's length (:mod:`detprune.pruning.targets`), so it is hit to
within one block, like the other allocations.

Importance is the groups' per-position scores as :func:`detprune.pruning.allocation.group_scores`
gives them, by default on their own scale (``normalisation="none"``): HALP's importance is a
Taylor estimate of the loss change, comparable across layers as it is, and per-layer
normalisation would price a thin, costly early layer's channels like a wide layer's
(:func:`detprune.pruning.policies.default_normalisation`). The limits (``min_channels``, ``max_ratio``, ``round_to``)
are the allowed widths of :meth:`Limits.allowed_kept`.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from detprune.pruning.allocation import Limits

COSTS = ("flops", "params", "latency")  # latency: a measured table (detprune.pruning.latency_table.LatencyCost)
ANALYTIC_COSTS = ("flops", "params")


class GroupCost:
    """What a removal ``{group: channels removed}`` costs (a group's width is its size minus its
    entry); the knapsack minimises importance lost per cost saved. A latency table plugs in here.

    Subclasses give :meth:`__call__`; :meth:`saving` and :meth:`neighbours` may be made
    faster (the defaults price the whole model and assume every group interacts).
    """

    def __call__(self, removal: Mapping[int, int]) -> float:
        raise NotImplementedError

    def saving(self, removal: Mapping[int, int], group: int, count: int) -> float:
        """Cost saved when ``group`` goes from ``removal[group]`` to ``count`` channels removed."""
        return self(removal) - self({**removal, group: count})

    def neighbours(self, group: int) -> Iterable[int] | None:
        """Groups whose saving may change when ``group`` shrinks; ``None``: any group."""
        return None


class AnalyticCost(GroupCost):
    """FLOPs (MACs) or parameters from the analytic cost model, savings priced locally."""

    def __init__(self, cost_model, kind: str):
        if kind not in ANALYTIC_COSTS:
            raise ValueError(f"cost kind {kind!r}")
        self.model, self.kind = cost_model, kind

    def __call__(self, removal):
        cost = self.model.predict(dict(removal))
        return float(cost.macs if self.kind == "flops" else cost.params)

    def saving(self, removal, group, count):
        d_params, d_macs = self.model.change(dict(removal), group, count)
        return -float(d_macs if self.kind == "flops" else d_params)

    def neighbours(self, group):
        return self.model.neighbours(group)


def knapsack_path(
    sizes: Mapping[int, int],
    allowed: Mapping[int, np.ndarray],
    orders: Mapping[int, np.ndarray],
    scores: Mapping[int, np.ndarray],
    cost: GroupCost,
) -> list[tuple[int, int]]:
    """The greedy walk: ``[(group, channels removed from it after this step), ...]``.

    ``allowed[g]``: the widths group ``g`` may keep, ascending (its size last); ``orders[g]``: its
    removable positions, least important first; ``scores[g]``: importance per position.
    A block that saves nothing goes after every block that saves something, least important first.
    """
    removal = {g: 0 for g in sizes}
    # prefix sums of importance along each order: a block's importance in O(1)
    prefix = {
        g: np.concatenate([[0.0], np.cumsum(np.asarray(scores[g], dtype=np.float64)[orders[g]])])
        for g in sizes
        if len(orders[g])
    }

    def next_count(g: int) -> int | None:
        kept = sizes[g] - removal[g]
        below = allowed[g][allowed[g] < kept]
        return None if not len(below) or g not in prefix else int(sizes[g] - below[-1])

    def key(g: int):
        count = next_count(g)
        if count is None:
            return None
        importance = float(prefix[g][count] - prefix[g][removal[g]])
        saved = cost.saving(removal, g, count)
        return (0, importance / saved, g, count) if saved > 0 else (1, importance, g, count)

    keys = {g: key(g) for g in sizes}
    path = []
    while True:
        live = [k for k in keys.values() if k is not None]
        if not live:
            return path
        _, _, g, count = min(live)
        removal[g] = count
        path.append((g, count))
        near = cost.neighbours(g)
        for h in sizes if near is None else near:
            if h in keys:
                keys[h] = key(h)


class KnapsackAllocator:
    """``amount`` in [0, 1] -> the first ``amount`` of the greedy path, as channels removed per group."""

    def __init__(
        self,
        coupled,
        scores: Mapping[int, np.ndarray],
        orders: Mapping[int, np.ndarray],
        limits: Limits,
        cost: GroupCost,
    ):
        self.sizes = {g.index: g.size for g in coupled.groups}
        allowed = {g.index: limits.allowed_kept(g.size, len(orders[g.index])) for g in coupled.groups}
        self.path = knapsack_path(self.sizes, allowed, orders, scores, cost)
        self.prunable_channels = sum(self.sizes[g] for g, a in allowed.items() if a[0] < self.sizes[g])

    def allocate(self, amount: float) -> dict[int, int]:
        k = int(round(min(max(float(amount), 0.0), 1.0) * len(self.path)))
        removal: dict[int, int] = {}
        for g, count in self.path[:k]:
            removal[g] = count
        return removal

    def removed_fraction(self, removal: Mapping[int, int]) -> float:
        return sum(removal.values()) / self.prunable_channels if self.prunable_channels else 0.0
