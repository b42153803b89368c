"""Prune to a measured latency: the FLOPs fraction whose pruned model runs at a target share of the original's time.

Latency does not fall in proportion to FLOPs (memory traffic, kernel launches and widths that
miss the hardware's tiles do not shrink with them), and how it falls depends on the backend.
So the search measures: each candidate FLOPs fraction is pruned on a deep copy with
:func:`detprune.pruning.prune_model`, exported, and timed against the original on the chosen
backend; bisection on the FLOPs fraction (the latency ratio falls as it falls) stops at the
first candidate whose measured ratio lies within ``tolerance`` of the target.

Measurements are noisy, so the tolerance is relative (5% by default: a target of 0.6 accepts
0.57..0.63), ONNX Runtime candidates are timed interleaved with the original
(:func:`detprune.runtime.time_side_by_side`) after a warm-up, and the GPU backends time the original
again beside every candidate.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.errors import DetpruneError
from detprune.pruning.pruner import PruneResult, prune_model
from detprune.pruning.targets import check_fraction

DEFAULT_LATENCY_TOLERANCE = 0.05
LOWEST_FLOPS = 0.05  # below this the search does not go: no detector survives it


@dataclass
class Candidate:
    """One measured point: a FLOPs target, what the pruner reached, and the latency ratio timed."""

    flops_target: float
    flops_kept: float | None  # None where the pruner could not reach the FLOPs target
    latency_ratio: float | None
    original_ms: float | None = None
    pruned_ms: float | None = None
    note: str | None = None
    predicted_ratio: float | None = None  # the latency table's prediction (table search)
    latency_aim: float | None = None  # the predicted fraction the table search asked for


@dataclass
class LatencySearch:
    """The search's settings and every candidate it measured; ``chosen`` indexes the accepted one."""

    target: float
    backend: str
    tolerance: float
    round_to: int
    imgsz: Any
    warmup: int
    runs: int
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int | None = None
    device: str | None = None
    method: str = "flops"  # flops: bisection on the FLOPs fraction; table: predicted by a latency table
    table: dict | None = None  # the table's key and its check on random cuts

    @property
    def measured_ratio(self) -> float | None:
        return None if self.chosen is None else self.candidates[self.chosen].latency_ratio

    @property
    def predicted_ratio(self) -> float | None:
        return None if self.chosen is None else self.candidates[self.chosen].predicted_ratio

    @property
    def within_tolerance(self) -> bool:
        ratio = self.measured_ratio
        return ratio is not None and abs(ratio - self.target) <= self.tolerance * self.target

    def as_dict(self) -> dict:
        out = asdict(self)
        out["measured_ratio"] = self.measured_ratio
        out["predicted_ratio"] = self.predicted_ratio
        out["within_tolerance"] = self.within_tolerance
        return out


def check_backend(backend: str) -> None:
    """A one-line error, before anything is pruned, where ``backend`` cannot run on this machine."""
    from detprune.runtime import check_backend as check

    check(backend)


def prune_to_latency(
    adapter: DetectorAdapter,
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    *,
    target: float,
    backend: str = "onnxruntime",
    tolerance: float = DEFAULT_LATENCY_TOLERANCE,
    max_steps: int = 6,
    imgsz: int = 320,
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    **prune_options: Any,
) -> tuple[PruneResult, LatencySearch]:
    """Prune a copy of ``model`` until its measured latency is ``target`` x the original's.

    ``prune_options`` go to :func:`prune_model` (round_to, min_channels, ...; not a target).
    Returns the pruned copy's :class:`PruneResult` and the search record. Where no candidate
    lands within ``tolerance`` after ``max_steps`` measurements, a one-line error names the
    closest measured ratio. ``model`` is left as it was given.
    """
    target = check_fraction("target_latency", target)
    if not 0 < tolerance < 1:
        raise DetpruneError(f"latency tolerance must lie in (0, 1), got {tolerance}")
    if max_steps < 1 or runs < 1 or warmup < 0:
        raise DetpruneError("need max_steps >= 1, runs >= 1 and warmup >= 0 for a latency search")
    check_backend(backend)
    search = LatencySearch(target, backend, tolerance, int(prune_options.get("round_to", 8)), imgsz, warmup, runs)
    say = progress or (lambda _: None)
    low, high = LOWEST_FLOPS, 1.0  # FLOPs fractions: latency ratio below / above the target
    fraction = target  # latency falls more slowly than FLOPs, so this is usually too high: a first bracket
    with tempfile.TemporaryDirectory(prefix="detprune-latency-target-") as work:
        timer = CandidateTimer(adapter, model, backend, imgsz, warmup, runs, threads, Path(work))
        for _ in range(max_steps):
            candidate, result = _measure(adapter, model, scores, fraction, imgsz, timer, prune_options)
            search.candidates.append(candidate)
            search.device = timer.device
            if candidate.latency_ratio is None:  # the pruner cannot cut this deep: the floor is above it
                say(f"FLOPs {fraction:.1%}: {candidate.note}")
                low = fraction
            else:
                say(f"FLOPs {candidate.flops_kept:.1%} kept: latency x{candidate.latency_ratio:.3f} on {backend}")
                if abs(candidate.latency_ratio - target) <= tolerance * target:
                    search.chosen = len(search.candidates) - 1
                    return result, search
                if candidate.latency_ratio > target:
                    high = fraction
                else:
                    low = fraction
            fraction = (low + high) / 2
            if high - low < 1e-3:
                break
    measured = [c for c in search.candidates if c.latency_ratio is not None]
    if not measured:
        raise DetpruneError(f"--target-latency {target:g}: no candidate could be pruned ({search.candidates[-1].note})")
    closest = min(measured, key=lambda c: abs(c.latency_ratio - target))
    raise DetpruneError(
        f"--target-latency {target:g} not reached on {backend} within {tolerance:.0%}: the closest measured latency "
        f"ratio "
        f"was {closest.latency_ratio:.3f} (at {closest.flops_kept:.1%} of the FLOPs) after {len(search.candidates)} "
        f"candidates"
    )


def prune_by_table(
    adapter: DetectorAdapter,
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    table,
    *,
    target: float,
    tolerance: float = DEFAULT_LATENCY_TOLERANCE,
    imgsz: int = 320,
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
    refinements: int = 2,
    progress: Callable[[str], None] | None = None,
    **prune_options: Any,
) -> tuple[PruneResult, LatencySearch]:
    """Prune a copy of ``model`` to a latency chosen by the table's prediction, then verify it.

    The cut is the one whose predicted latency is ``target`` of the original's (with
    ``allocation="cost"`` the knapsack spends predicted latency, HALP); it is timed interleaved
    with the original on the table's backend, and where the measured ratio lies further than
    ``tolerance`` from the target the predicted aim is corrected and the cut repeated, at most
    ``refinements`` times: first by target / measured, then along the secant through the last
    two (aim, measured) pairs (the table's error is not a constant factor: a model whose
    untimed operations, attention for one, shrink with the channels drifts further as the cut
    deepens). The candidate measured nearest the target is returned, with the record.
    """
    target = check_fraction("target_latency", target)
    if not 0 < tolerance < 1:
        raise DetpruneError(f"latency tolerance must lie in (0, 1), got {tolerance}")
    backend = table.backend
    search = LatencySearch(
        target,
        backend,
        tolerance,
        int(prune_options.get("round_to", 8)),
        imgsz,
        warmup,
        runs,
        method="table",
        table={"key": table.key, "check": {k: v for k, v in table.check.items() if k != "rows"}},
    )
    say = progress or (lambda _: None)
    results: list[PruneResult] = []
    aim = target
    with tempfile.TemporaryDirectory(prefix="detprune-latency-target-") as work:
        timer = CandidateTimer(adapter, model, backend, imgsz, warmup, runs, threads, Path(work))
        if refinements < 0:
            raise DetpruneError(f"refinements must be >= 0, got {refinements}")
        for _ in range(1 + refinements):
            try:
                result = prune_model(adapter, copy.deepcopy(model), scores, target_latency=aim, latency_table=table,
                                     imgsz=imgsz, **prune_options)
            except DetpruneError as err:
                if not results:
                    raise
                search.candidates.append(Candidate(None, None, None, note=str(err), latency_aim=aim))
                break
            original_ms, pruned_ms = timer.ratio(result.model)
            ratio = pruned_ms / original_ms
            search.device = timer.device
            search.candidates.append(Candidate(None, result.achieved["flops"], ratio, original_ms, pruned_ms,
                                               predicted_ratio=result.achieved["latency"], latency_aim=aim))
            results.append(result)
            say(f"latency predicted x{result.achieved['latency']:.3f}, measured x{ratio:.3f} on {backend} "
                f"({result.achieved['flops']:.1%} of the FLOPs)")
            if abs(ratio - target) <= tolerance * target:
                break
            aim = min(max(next_aim(search.candidates, target), 0.01), 0.999)
    measured = [(k, c) for k, c in enumerate(search.candidates) if c.latency_ratio is not None]
    chosen, _ = min(measured, key=lambda kc: abs(kc[1].latency_ratio - target))
    search.chosen = chosen
    if not search.within_tolerance:
        say(f"--target-latency {target:g}: the nearest measured cut is x{search.measured_ratio:.3f}, "
            f"outside {tolerance:.0%} (try --latency-search flops, or a wider --latency-tolerance)")
    return results[[k for k, _ in measured].index(chosen)], search


def next_aim(candidates: list[Candidate], target: float) -> float:
    """The predicted fraction to ask for next: scaled by target / measured after one cut, along
    the secant through the last two measured cuts after more (scaled where they coincide)."""
    measured = [c for c in candidates if c.latency_ratio is not None]
    last = measured[-1]
    if len(measured) >= 2:
        before = measured[-2]
        slope = (last.latency_ratio - before.latency_ratio) / (last.latency_aim - before.latency_aim) \
            if last.latency_aim != before.latency_aim else 0.0
        if slope > 0:
            return last.latency_aim + (target - last.latency_ratio) / slope
    return last.latency_aim * target / last.latency_ratio  # the table was off by measured / predicted


def _measure(
    adapter, model, scores, fraction, imgsz, timer: "CandidateTimer", prune_options
) -> tuple[Candidate, PruneResult | None]:
    candidate_model = copy.deepcopy(model)
    try:
        result = prune_model(adapter, candidate_model, scores, target_flops=fraction, imgsz=imgsz, **prune_options)
    except DetpruneError as err:
        return Candidate(fraction, None, None, note=str(err)), None
    original_ms, pruned_ms = timer.ratio(result.model)
    return Candidate(fraction, result.achieved["flops"], pruned_ms / original_ms, original_ms, pruned_ms), result


class CandidateTimer:
    """Times a pruned candidate against the original on one backend, the same way every time."""

    def __init__(self, adapter, original, backend, imgsz, warmup, runs, threads, work: Path):
        self.adapter, self.backend, self.imgsz = adapter, backend, imgsz
        self.warmup, self.runs, self.threads, self.work = warmup, runs, threads, work
        self.original = original
        self.device: str | None = None
        self.count = 0
        self.original_artifact = None

    def ratio(self, pruned: nn.Module) -> tuple[float, float]:
        """(original ms, pruned ms): medians taken in the same session."""
        self.count += 1
        if self.original_artifact is None:
            self.original_artifact = self._artifact(self.original, "original")
        candidate = self._artifact(pruned, f"candidate{self.count}")
        shape = self._shape(self.original)
        from detprune.runtime import time_side_by_side

        # the original again beside each candidate, in one session (interleaved on ONNX Runtime):
        # machine load and GPU clocks drift between measurements
        stats = time_side_by_side(self.backend, {"original": self.original_artifact, "pruned": candidate}, shape,
                                  self.warmup, self.runs, threads=self.threads)
        first, second = stats["original"], stats["pruned"]
        self.device = first.device
        return first.median_ms, second.median_ms

    def _shape(self, model) -> list[int]:
        return list(self.adapter.example_inputs(model, self.imgsz).shape)

    def _artifact(self, model: nn.Module, tag: str):
        """What the backend times: an ONNX file, an nn.Module, or a TensorRT engine (FP16)."""
        from detprune.runtime import prepare

        example = self.adapter.example_inputs(model, self.imgsz)
        return prepare(self.backend, self.adapter.export_module(model), example, self.work, tag)
