"""How many channels each coupled group keeps, and which.

1. Per-layer scores are normalised within each layer (L2 by default), so a global ranking
   compares layers of different scales on one axis; a group's score for a position is then
   the mean over the group's layers of their normalised scores. The norm also carries the
   layer's width: after L2 (L1) normalisation a channel of a layer whose channels are all alike
   scores 1/sqrt(C) (1/C), so at equal relative importance wide layers lose channels first,
   which is where most parameters are. ``max`` and ``mean`` make a typical channel score
   about 1 whatever the width, spreading the cut more evenly across layers.
2. Within a group, channels go in order of increasing score (ties: lower index first).
3. How many go (``allocation``): a *global* allocation removes the lowest-scored channels network-wide (one
   threshold on the global ranking); a *per-layer* one removes the same fraction from every
   group, up to rounding (a group's rounding offset grows with its mean score, so equal-sized
   groups reach a rounding step one after another and the total moves in fine steps) and is
   called *uniform*; a *cost* allocation removes the blocks that lose the least importance per
   unit of FLOPs or parameters saved (:mod:`detprune.pruning.knapsack`). One scalar ``amount``
   in [0, 1] drives each, so the target search (:mod:`detprune.pruning.targets`) is a
   one-dimensional bisection. The widths may come from one criterion's scores and the
   channels kept within each group from another's (:func:`select_channels`).
4. Limits per group: remove at most ``max_ratio`` of its channels, keep at least
   ``min_channels``, and keep a multiple of ``round_to`` (tensor cores and TensorRT kernels
   run fastest on widths divisible by 8, 16 or 32); a group's original width is always allowed.
   Rounding goes to the nearest allowed width, ties towards keeping more.

``max_ratio`` defaults to 0.8: a global threshold can otherwise empty a layer whose scores are
uniformly low, and a layer cut to a tenth rarely recovers in fine-tuning, while 0.8 still
reaches FLOPs targets far below 30%.

Some criteria choose subsets rather than scores; :func:`plan_from_kept` turns a kept set per
layer into removals under the same limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from detprune.errors import BadInputError, DetpruneError
from detprune.pruning.groups import CoupledGroups

NORMALISATIONS = ("l2", "l1", "max", "mean", "none")
# the built-in allocations (detprune.pruning.policies registers them, and any added one:
# policies.allocation_names() is the full list). global: one threshold on the network-wide ranking;
# uniform: the same fraction from every group; cost: a greedy knapsack on importance per unit of
# FLOPs, parameters or latency (detprune.pruning.knapsack)
ALLOCATIONS = ("global", "uniform", "cost")
DEFAULT_MAX_RATIO = 0.8
DEFAULT_MIN_CHANNELS = 8
DEFAULT_ROUND_TO = 8


# Criteria that get the cost allocation when none is named; the others get the global ranking.
# Measured by the k-fold KITTI benchmark at 50% FLOPs (docs/benchmarks.md, "Accuracy at the
# cut"): Taylor gains 6.0 mAP50 from cost over global after 10 fine-tuning epochs and 2.9 after
# 30; saliency loses 1.1 (within the spread over folds) and L1 5 points (0.3 against 5.2).
from detprune.defaults import COST_ALLOCATION_CRITERIA  # noqa: E402  (one place: detprune/defaults.py)


def default_allocation(criterion: str | None) -> str:
    """The allocation a criterion gets by default: ``cost`` for those measured to gain from it."""
    return "cost" if criterion in COST_ALLOCATION_CRITERIA else "global"


def normalise(values: np.ndarray, how: str = "l2") -> np.ndarray:
    """Scale one layer's scores so that layers compare; ``none`` leaves them."""
    if how not in NORMALISATIONS:
        raise DetpruneError(f"unknown normalisation {how!r}; choose from {', '.join(NORMALISATIONS)}")
    if how == "none":
        return values
    scale = {
        "l2": lambda v: float(np.sqrt(np.sum(v * v))),
        "l1": lambda v: float(np.sum(np.abs(v))),
        "max": lambda v: float(np.max(np.abs(v))) if v.size else 0.0,
        "mean": lambda v: float(np.mean(np.abs(v))) if v.size else 0.0,
    }[how](values)
    return values / scale if scale > 0 else values


def _layer_scores(coupled: CoupledGroups, scores: Mapping[str, torch.Tensor], how: str) -> dict[str, np.ndarray]:
    names = dict(coupled.model.named_modules())
    out = {}
    for name, value in scores.items():
        if name not in names:
            raise BadInputError(f"scores name layer {name!r}, which this model does not have")
        values = torch.as_tensor(value).detach().to(torch.float64).cpu().numpy().reshape(-1)
        width = getattr(names[name], "out_channels", getattr(names[name], "out_features", None))
        if width is not None and values.size != width:
            raise BadInputError(
                f"scores for layer {name!r} have {values.size} entries; the layer has {width} output channels"
            )
        if not np.all(np.isfinite(values)):
            raise BadInputError(f"scores for layer {name!r} contain NaN or infinity")
        out[name] = normalise(values, how)
    return out


def group_scores(
    coupled: CoupledGroups, scores: Mapping[str, torch.Tensor], normalisation: str = "l2"
) -> dict[int, np.ndarray]:
    """One score per position of every group: the mean over its scored layers (NaN where none is)."""
    layers = _layer_scores(coupled, scores, normalisation)
    out = {}
    for g in coupled.groups:
        total = np.zeros(g.size)
        count = np.zeros(g.size)
        for member in g.members:
            if member.name not in layers:
                continue
            # a layer may reach a position through several channels: average those first
            per_pos = np.zeros(g.size)
            hits = np.zeros(g.size)
            np.add.at(per_pos, member.positions, layers[member.name][member.channels])
            np.add.at(hits, member.positions, 1.0)
            seen = hits > 0
            total[seen] += per_pos[seen] / hits[seen]
            count[seen] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[g.index] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def removal_orders(coupled: CoupledGroups, scores: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Each group's removable positions, least important first; unscored positions stay."""
    orders = {}
    for g in coupled.groups:
        s = scores.get(g.index)
        if s is None:
            orders[g.index] = np.zeros(0, dtype=np.int64)
            continue
        candidates = np.array([p for p in g.prunable if np.isfinite(s[p])], dtype=np.int64)
        orders[g.index] = candidates[np.lexsort((candidates, s[candidates]))] if len(candidates) else candidates
    return orders


@dataclass(frozen=True)
class Limits:
    round_to: int = DEFAULT_ROUND_TO
    min_channels: int = DEFAULT_MIN_CHANNELS
    max_ratio: float = DEFAULT_MAX_RATIO

    def __post_init__(self):
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise DetpruneError(f"round_to must be a whole number >= 1 (1 = no rounding), got {self.round_to!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise DetpruneError(f"min_channels must be a whole number >= 1, got {self.min_channels!r}")
        if not 0 < self.max_ratio < 1:
            raise DetpruneError(f"max_ratio must lie in (0, 1), got {self.max_ratio!r}")

    def allowed_kept(self, size: int, removable: int) -> np.ndarray:
        """The widths a group of ``size`` positions may keep, ascending; ``size`` itself always."""
        floor = max(self.min_channels, math.ceil(size * (1 - self.max_ratio) - 1e-9), size - removable)
        start = math.ceil(floor / self.round_to) * self.round_to
        widths = list(range(start, size, self.round_to)) if start < size else []
        return np.array(widths + [size], dtype=np.int64)


def snap_kept(allowed: np.ndarray, wanted: float) -> int:
    """The allowed width nearest to ``wanted``; ties keep more."""
    i = int(np.searchsorted(allowed, wanted))
    if i >= len(allowed):
        return int(allowed[-1])
    if i == 0:
        return int(allowed[0])
    below, above = allowed[i - 1], allowed[i]
    return int(above if above - wanted <= wanted - below else below)


class Allocator:
    """``amount`` in [0, 1] -> channels removed per group, global or per-layer."""

    def __init__(
        self,
        coupled: CoupledGroups,
        scores: Mapping[int, np.ndarray],
        orders: Mapping[int, np.ndarray],
        limits: Limits,
        global_ranking: bool = True,
    ):
        self.global_ranking = global_ranking
        self.sizes = {g.index: g.size for g in coupled.groups}
        self.allowed = {g.index: limits.allowed_kept(g.size, len(orders[g.index])) for g in coupled.groups}
        # the most a group may lose before rounding: down to its smallest allowed width
        self.caps = {g: self.sizes[g] - int(a[0]) for g, a in self.allowed.items()}
        # positions in the network-wide ranking (score, group, rank in group), caps applied
        rows = [
            (float(scores[g][p]), g, rank)
            for g, order in orders.items()
            for rank, p in enumerate(order[: self.caps[g]].tolist())
        ]
        rows.sort()
        self._ranked_groups = np.array([g for _, g, _ in rows], dtype=np.int64)
        # channels counted by a "ratio" target: those of groups where anything may go
        self.prunable_channels = sum(self.sizes[g] for g in self.caps if self.caps[g] > 0)
        # per-layer rounding offsets in (0, 1), less important groups lowest: equal-sized groups then
        # cross a rounding step one after another instead of all at once, so the uniform ratio
        # moves in fine steps (each group stays within one rounding step of it)
        mean = {g: float(np.mean(scores[g][o])) if len(o) else np.inf for g, o in orders.items()}
        ranked = sorted(self.caps, key=lambda g: (mean[g], g))
        self._offsets = {g: (rank + 0.5) / len(ranked) for rank, g in enumerate(ranked)}
        self._round_to = limits.round_to

    def allocate(self, amount: float) -> dict[int, int]:
        """Channels to remove per group (after rounding) for an ``amount`` in [0, 1]."""
        amount = min(max(float(amount), 0.0), 1.0)
        kept = self._global(amount) if self.global_ranking else self._per_layer(amount)
        return {g: self.sizes[g] - k for g, k in kept.items() if k < self.sizes[g]}

    def _global(self, amount: float) -> dict[int, int]:
        """The lowest ``amount`` of the ranking goes; each group's width is then rounded to the nearest allowed."""
        k = int(round(amount * len(self._ranked_groups)))
        groups, counts = np.unique(self._ranked_groups[:k], return_counts=True)
        return {int(g): snap_kept(self.allowed[int(g)], self.sizes[int(g)] - int(n)) for g, n in zip(groups, counts)}

    def _per_layer(self, amount: float) -> dict[int, int]:
        """Every group keeps ``1 - amount`` of its width, rounded at its own offset."""
        kept = {}
        for g, allowed in self.allowed.items():
            wanted = self.sizes[g] * (1.0 - amount) + self._offsets[g] * self._round_to
            kept[g] = int(allowed[max(int(np.searchsorted(allowed, wanted, side="right")) - 1, 0)])
        return kept

    def removed_fraction(self, removal: Mapping[int, int]) -> float:
        return sum(removal.values()) / self.prunable_channels if self.prunable_channels else 0.0


def select_channels(orders: Mapping[int, np.ndarray], removal: Mapping[int, int]) -> dict[int, np.ndarray]:
    """Which channels go: the first ``removal[g]`` of each group's order (its least important).

    The widths (``removal``) may come from another criterion's allocation than the ``orders``.
    """
    plan = {}
    for g, n in removal.items():
        order = orders.get(g, np.zeros(0, dtype=np.int64))
        if n > len(order):
            raise BadInputError(
                f"group {g} is to lose {n} channels but the selecting scores rank only {len(order)} of its channels"
            )
        plan[g] = order[:n]
    return plan


def plan_from_kept(
    coupled: CoupledGroups,
    kept: Mapping[str, Sequence[int]],
    limits: Limits,
    scores: Mapping[int, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """Removals per group from a kept set per layer (a criterion that picks subsets).

    A position stays if any of the group's layers with a kept set keeps its channel; groups
    none of whose layers has a kept set stay whole. Widths are rounded UP to the limits, never
    dropping a chosen channel; the extra channels are the best-scored (or lowest-index) others.
    """
    names = dict(coupled.model.named_modules())
    for name in kept:
        if name not in names:
            raise BadInputError(f"kept channels name layer {name!r}, which this model does not have")
    plan = {}
    for g in coupled.groups:
        opinions = [m for m in g.members if m.name in kept]
        if not opinions:
            continue
        keep = np.zeros(g.size, dtype=bool)
        for m in opinions:
            keep[m.positions[np.isin(m.channels, np.asarray(list(kept[m.name]), dtype=np.int64))]] = True
        keep |= g.locked
        allowed = limits.allowed_kept(g.size, int((~g.locked).sum()))
        width = int(allowed[np.searchsorted(allowed, keep.sum())])  # round up
        extra = np.flatnonzero(~keep)
        if width > keep.sum():
            s = scores.get(g.index) if scores else None
            rank = np.nan_to_num(-s[extra], nan=np.inf) if s is not None else np.zeros(len(extra))
            keep[extra[np.lexsort((extra, rank))][: width - int(keep.sum())]] = True
        removed = np.flatnonzero(~keep)
        if len(removed):
            plan[g.index] = removed
    return plan
