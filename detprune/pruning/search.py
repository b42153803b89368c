"""Evolutionary width search under a FLOPs or measured-latency budget (PSE-Net, arXiv:2408.16233, §3.4).

The trained supernet (:mod:`detprune.pruning.supernet_train`) estimates any subnet's accuracy
in one masked evaluation, so a search can afford hundreds of candidates:

1. the first population is drawn from the learned width prior and repaired into the budget
   window [0.9 x budget, budget] (cheaper subnets waste the budget, dearer ones break it);
2. each generation is scored by the estimator; the ``parents`` best feasible candidates
   breed the next: half by uniform crossover of two parents, half by mutating one (each
   group's width redrawn from the prior with probability ``mutation``), every child repaired
   into the window and never one seen before;
3. the best feasible candidate of the whole history wins; it is cut for real with
   ``prune_model(kept=space.to_kept(subnet))`` and fine-tuned by the caller.

Budgets: ``flops`` is exact and free (the pruner's cost model). ``latency`` is a fraction of
the original's measured latency on a backend: every candidate is cut on a deep copy and timed
against the original (:class:`detprune.pruning.latency_target` does the timing; ONNX Runtime
costs an export and ``runs`` timed runs of both models per candidate, cached per subnet).
Candidates are kept in a FLOPs window found by a calibration on a few subnets spread over the
FLOPs range (latency ratio interpolated against FLOPs), and any whose measured ratio exceeds
the target is infeasible, so the measurement, not the proxy, decides.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.errors import BadInputError, DetpruneError
from detprune.pruning.prior import WidthPrior
from detprune.pruning.pruner import PruneResult, prune_model
from detprune.pruning.supernet import Subnet, WidthSpace
from detprune.utils.progress import progress_bar

WINDOW = 0.9  # candidates use at least this share of the budget


def cut(adapter: DetectorAdapter, model: nn.Module, space: WidthSpace, subnet: Subnet) -> PruneResult:
    """Prune ``model`` (in place) to ``subnet``'s channels: the real, smaller model."""
    return prune_model(adapter, model, kept=space.to_kept(subnet), imgsz=space.imgsz,
                       round_to=space.limits.round_to, min_channels=space.limits.min_channels,
                       max_ratio=space.limits.max_ratio)


class FlopsBudget:
    """Keep at most ``target`` of the FLOPs (a fraction), by the exact cost model."""

    kind = "flops"

    def __init__(self, space: WidthSpace, target: float):
        if not 0 < target <= 1:
            raise BadInputError(f"the FLOPs budget is a fraction in (0, 1], got {target}")
        self.space, self.target = space, target
        self.window = (WINDOW * target, target)

    def value(self, subnet: Subnet) -> float:
        return self.space.flops_fraction(subnet)

    def feasible(self, subnet: Subnet) -> bool:
        return self.value(subnet) <= self.target + 1e-12


class LatencyBudget:
    """Keep at most ``target`` of the original's latency on ``backend``, measured per candidate."""

    kind = "latency"

    def __init__(self, adapter: DetectorAdapter, model: nn.Module, space: WidthSpace, target: float, *,
                 backend: str = "onnxruntime", warmup: int = 3, runs: int = 20, threads: int | None = None):
        from detprune.pruning.latency_target import CandidateTimer, check_backend

        if not 0 < target <= 1:
            raise BadInputError(f"the latency budget is a fraction in (0, 1], got {target}")
        check_backend(backend)
        self.adapter, self.space, self.target, self.backend = adapter, space, target, backend
        self.original = copy.deepcopy(model)  # unmasked weights are irrelevant to timing; shapes are what count
        self._work = tempfile.TemporaryDirectory(prefix="detprune-search-latency-")
        self.timer = CandidateTimer(
            adapter, self.original, backend, space.imgsz, warmup, runs, threads, Path(self._work.name)
        )
        self.cache: dict[Subnet, float] = {}
        self.window = (WINDOW * target, target)  # in FLOPs, until calibrated
        self.seconds = 0.0

    def value(self, subnet: Subnet) -> float:
        """The measured latency ratio of ``subnet`` cut from a copy of the model (cached)."""
        if subnet not in self.cache:
            tick = time.perf_counter()
            candidate = copy.deepcopy(self.original)
            cut(self.adapter, candidate, self.space, subnet)
            original_ms, pruned_ms = self.timer.ratio(candidate)
            self.cache[subnet] = pruned_ms / original_ms
            self.seconds += time.perf_counter() - tick
        return self.cache[subnet]

    def feasible(self, subnet: Subnet) -> bool:
        return self.value(subnet) <= self.target

    def calibrate(self, prior: WidthPrior, rng: np.random.Generator, points: int = 5) -> tuple[float, float]:
        """Time ``points`` subnets spread over the FLOPs range; the FLOPs window whose latency meets the target."""
        levels = np.linspace(prior.low, prior.high, points)
        flops, ratios = [], []
        for level in levels:
            subnet = prior.repair(prior.draw(rng), level - 0.02, level + 0.02, rng)
            flops.append(self.space.flops_fraction(subnet))
            ratios.append(self.value(subnet))
        order = np.argsort(flops)
        f, r = np.asarray(flops)[order], np.maximum.accumulate(np.asarray(ratios)[order])  # latency grows with FLOPs
        top = float(np.interp(self.target, r, f)) if r[0] <= self.target else float(f[0])
        self.window = (WINDOW * top, top)
        return self.window

    def close(self) -> None:
        self._work.cleanup()


@dataclass
class Evolution:
    """Every candidate the search scored, and the winner."""

    best: Subnet
    fitness: float
    budget_value: float
    # generation, flops, fitness, budget value, feasible, widths index
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"best": list(self.best), "fitness": self.fitness, "budget_value": self.budget_value,
                "history": self.history, "seconds": self.seconds}


def evolve(
    space: WidthSpace,
    prior: WidthPrior,
    fitness: Callable[[Subnet], float],
    budget: FlopsBudget | LatencyBudget,
    *,
    population: int = 16,
    generations: int = 6,
    parents: int | None = None,
    mutation: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> Evolution:
    """Evolutionary search for the fittest feasible subnet in the budget's window."""
    if population < 2 or generations < 1 or not 0 <= mutation <= 1:
        raise BadInputError("the search needs population >= 2, generations >= 1 and mutation in [0, 1]")
    parents = max(2, min(parents or population // 2, population))
    rng = np.random.default_rng(seed)
    low, high = budget.window
    tick = time.perf_counter()
    seen: dict[Subnet, dict] = {}
    history: list[dict] = []

    def fill(pool: list[Subnet], make: Callable[[], Subnet]) -> list[Subnet]:
        for _ in range(20 * population):
            if len(pool) >= population:
                break
            child = prior.repair(make(), low, high, rng)
            if child not in seen and child not in pool:
                pool.append(child)
        return pool

    current = fill([], lambda: prior.draw(rng))
    for generation in progress_bar(range(generations), total=generations, desc="search", disable=not progress):
        for subnet in current:
            entry = {"generation": generation, "flops": space.flops_fraction(subnet)}
            entry["budget"] = budget.value(subnet)
            entry["feasible"] = bool(budget.feasible(subnet))
            entry["fitness"] = float(fitness(subnet)) if entry["feasible"] else None
            entry["subnet"] = list(subnet)
            seen[subnet] = entry
            history.append(entry)
        if generation == generations - 1:
            break
        ranked = sorted((s for s, e in seen.items() if e["feasible"]), key=lambda s: -seen[s]["fitness"])[:parents]

        def child() -> Subnet:
            if len(ranked) < 2:  # too few feasible parents yet: fresh draws from the prior  # noqa: B023
                return prior.draw(rng)
            a, b = (ranked[int(i)] for i in rng.choice(len(ranked), 2, replace=False))  # noqa: B023
            if rng.random() < 0.5:
                return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))
            return prior.mutate(a, mutation, rng)

        current = fill([], child)
        if not current:  # the window holds no subnet not yet seen
            break
    feasible = [s for s, e in seen.items() if e["feasible"]]
    if not feasible:
        raise DetpruneError(f"no candidate met the {budget.kind} budget of {budget.target:g}; "
                            "try a larger budget, more generations or a wider --width-choices")
    best = max(feasible, key=lambda s: (seen[s]["fitness"], -seen[s]["flops"]))
    return Evolution(best, seen[best]["fitness"], seen[best]["budget"], history, time.perf_counter() - tick)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation (ties in either sequence handled); NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise BadInputError("kendall_tau needs two sequences of the same length")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    concordant_minus_discordant = float(np.sum(dx * dy))
    pairs_x, pairs_y = float(np.sum(dx != 0)), float(np.sum(dy != 0))
    if pairs_x == 0 or pairs_y == 0:
        return float("nan")
    return concordant_minus_discordant / np.sqrt(pairs_x * pairs_y)
