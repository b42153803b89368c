"""CAR's greedy schedule (Abbasi-Asl and Yu, 2017): score, remove the least important channel(s),
optionally fine-tune, re-score, repeat.

The scores come from :class:`detprune.criteria.car.CAR` (the criterion only scores); the cut is
:func:`detprune.pruning.prune_model` with ``kept=...``, so this schedule drives the pruner and
does not reimplement it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.car import CAR
from detprune.data.batch import Batch
from detprune.errors import DetpruneError
from detprune.pruning.groups import enumerate_groups
from detprune.pruning.pruner import conv_channels, prune_model, trace_forward

log = logging.getLogger(__name__)


@dataclass
class CarStep:
    """One greedy step: what was removed (layer -> channels, numbering before the step) and its score."""

    step: int
    removed: dict[str, list[int]]
    scores: dict[str, float]  # (layer:channel) -> CAR score of the removed channels
    kept: dict[str, list[int]]


@dataclass
class CarPruneResult:
    model: nn.Module
    steps: list[CarStep]
    seconds: float
    evaluations: int


def car_prune(
    adapter: DetectorAdapter,
    model: nn.Module,
    batches: Iterable[Batch],
    steps: int,
    per_step: int = 1,
    finetune_fn: Callable[[nn.Module, int], nn.Module | None] | None = None,
    *,
    criterion: CAR | None = None,
    min_channels: int = 1,
    max_ratio: float = 0.9,
    imgsz: int | Sequence[int] = 320,
) -> CarPruneResult:
    """Greedy CAR pruning: ``steps`` times, remove the ``per_step`` least important channels.

    Each step scores the (prepared) model with ``criterion`` (default ``CAR()``), picks the
    lowest-scored MEASURED channels over all scored layers (one per coupled position: a
    channel tied to others through a residual add removes them with it; positions locked by
    protected layers, and groups at ``min_channels`` or at ``max_ratio`` removed in one
    step, are skipped), cuts them with
    ``prune_model(kept=...)`` (no rounding), then calls ``finetune_fn(model, step)``, whose
    return value, if not None, replaces the model. The model is pruned in place.
    """
    if steps < 1 or per_step < 1 or min_channels < 1:
        raise DetpruneError("car_prune: steps, per_step and min_channels must be >= 1")
    criterion = criterion or CAR()
    held = list(batches)  # read once; every step re-scores on the same images
    tick = time.perf_counter()
    history: list[CarStep] = []
    evaluations = 0
    for step in range(steps):
        scores = criterion.score(adapter, model, held)
        evaluations += criterion.last_stats.evaluations
        kept, removed, picked = _least_important(adapter, model, scores, criterion.last_measured, per_step,
                                                 min_channels, max_ratio, imgsz)
        if not removed:
            log.info("car_prune: nothing left to remove after %d step(s)", step)
            break
        prune_model(adapter, model, kept=kept, round_to=1, min_channels=min_channels, max_ratio=max_ratio, imgsz=imgsz)
        history.append(CarStep(step, removed, picked, kept))
        if finetune_fn is not None:
            model = finetune_fn(model, step) or model
    return CarPruneResult(model, history, time.perf_counter() - tick, evaluations)


def _least_important(adapter, model, scores, measured, per_step, min_channels, max_ratio, imgsz):
    """Kept sets that remove the ``per_step`` lowest-scored removable positions, consistently
    across every layer coupled to them (a position goes only if no layer keeps it)."""
    coupled = enumerate_groups(model, adapter.example_inputs(model, imgsz), adapter.protected_layers(model),
                               trace_forward(adapter, model))
    widths = conv_channels(model)
    where: dict[tuple[str, int], tuple[int, int]] = {}  # (layer, channel) -> (group, position)
    for g in coupled.groups:
        for m in g.members:
            for p, c in zip(m.positions.tolist(), m.channels.tolist()):
                where.setdefault((m.name, c), (g.index, p))
    candidates = sorted(((float(scores[n][c]), n, int(c)) for n, chans in measured.items() for c in chans.tolist()),
                        key=lambda t: (t[0], t[1], t[2]))
    groups = {g.index: g for g in coupled.groups}
    gone: dict[tuple[int, int], None] = {}
    lost: dict[int, int] = {}  # group -> positions picked
    picked: dict[str, float] = {}
    for value, name, channel in candidates:
        if len(gone) >= per_step:
            break
        if (name, channel) not in where:
            continue
        gi, p = where[(name, channel)]
        g = groups[gi]
        if g.locked[p] or (gi, p) in gone:
            continue
        floor = max(min_channels, math.ceil(g.size * (1 - max_ratio) - 1e-9))  # what prune_model allows
        if g.size - lost.get(gi, 0) <= floor:
            continue
        gone[(gi, p)] = None
        picked[f"{name}:{channel}"] = value
        lost[gi] = lost.get(gi, 0) + 1
    removed: dict[str, set[int]] = {}
    for gi, p in gone:
        for m in groups[gi].members:
            removed.setdefault(m.name, set()).update(m.channels[m.positions == p].tolist())
    kept = {n: [c for c in range(widths[n]) if c not in chans] for n, chans in removed.items()}
    return kept, {n: sorted(c) for n, c in removed.items()}, picked
