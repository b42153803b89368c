"""A measured latency table: what each conv / linear layer costs in time at the widths a cut gives it.

Design. Timing the whole model with one group narrowed to each grid width costs
``groups x widths`` full-model runs (YOLOv8n at 640 px: ~60 groups x 5 widths x ~0.3 s x 20
runs on one core, over half an hour), and an additive per-group model misses the main effect
anyway: a conv's time grows with ``c_in x c_out``, so the saving of narrowing one group depends
on how far its neighbour was narrowed. So, as HALP does, the table is kept per layer: every
recorded conv / linear call is timed ALONE, as a small graph (the layer and its activation) at
its own input resolution, on a grid of (input width, output width) pairs on the rounding grid
(``points`` widths per axis that a group can move, its full width among them), the grid
variants interleaved round by round and the median taken. Widths between grid points are
interpolated bilinearly. A layer whose widths no group moves is timed at its width only.

The model's latency for a cut is the sum of its layers' table entries at the cut's widths plus
a fixed remainder: the whole model's measured time minus the sum of its layers at full width
(concats, upsampling, pooling, the head's decoding, the runtime's per-run overhead). That
remainder is the approximation; :func:`detprune.pruning.latency_measure.check_table` measures
how well the sum predicts whole cut models and records the error in the table.

Timings are noisy and a measured grid can dip where a width runs faster than a narrower one;
each layer's grid is made non-decreasing in both widths (a running maximum), so the predicted
latency never grows when a group narrows, which the knapsack and the target bisection need.

Tables are cached as JSON (written atomically) under ``DETPRUNE_LATENCY_CACHE`` or
``~/.cache/detprune/latency``, named by a hash of the architecture (every conv / linear call's
name and shapes), the backend, the device, the input shape (batch and size) and the threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from detprune.errors import BadInputError
from detprune.pruning.flops import ROOT_TYPES_PRICED, _is_depthwise
from detprune.pruning.knapsack import GroupCost

TABLE_VERSION = 2  # 2: timed without ONNX Runtime's thread spinning (detprune.export.onnx.session_options)
DEFAULT_POINTS = 4  # grid widths per axis a group can move
CACHE_ENV = "DETPRUNE_LATENCY_CACHE"
RIDER_SUFFIX = "+roi_align"  # a table entry timed beside the layer it feeds (not a conv / linear call)


@dataclass
class LayerTiming:
    """One conv / linear call: its widths at full size, the grid it was timed on and the times (ms)."""

    op: str  # "conv", "depthwise", "linear" or "roi_align" (a rider: see RIDER_SUFFIX)
    c_in: int
    c_out: int
    grid_in: list[int]
    grid_out: list[int]
    ms: list[list[float]]  # ms[i][j]: input width grid_in[i], output width grid_out[j]

    def at(self, c_in: float, c_out: float) -> float:
        """Bilinear interpolation on the grid; linear extrapolation below it, never under zero."""
        table = np.asarray(self.ms, dtype=np.float64)
        rows = _weights(self.grid_in, c_in)
        cols = _weights(self.grid_out, c_out)
        value = sum(wr * wc * table[i, j] for i, wr in rows for j, wc in cols)
        return max(float(value), 0.0)

    @property
    def full(self) -> float:
        return float(self.ms[-1][-1])


def _weights(grid: Sequence[int], x: float) -> list[tuple[int, float]]:
    """Interpolation weights of ``x`` on ``grid`` (ascending): two neighbours, or one at an end."""
    if len(grid) == 1 or x >= grid[-1]:
        return [(len(grid) - 1, 1.0)]
    i = int(np.searchsorted(grid, x, side="right")) - 1
    i = min(max(i, 0), len(grid) - 2)  # below the grid: the first segment, extended
    t = (x - grid[i]) / (grid[i + 1] - grid[i])
    return [(i, 1.0 - t), (i + 1, t)]


def monotone(ms: np.ndarray) -> np.ndarray:
    """The grid made non-decreasing along both widths (a running maximum, from narrow to wide)."""
    out = np.maximum.accumulate(np.asarray(ms, dtype=np.float64), axis=0)
    return np.maximum.accumulate(out, axis=1)


def grid_widths(
    width: int, movable: bool, points: int = DEFAULT_POINTS, round_to: int = 8, low: float = 0.2
) -> list[int]:
    """``points`` widths from ``low`` x ``width`` to ``width`` on the rounding grid; ``[width]`` if fixed."""
    if not movable or width <= round_to:
        return [int(width)]
    wanted = np.linspace(low * width, width, points)
    snapped = {max(round_to, int(round(w / round_to)) * round_to) for w in wanted[:-1]}
    return sorted(w for w in snapped if w < width) + [int(width)]


@dataclass
class LatencyTable:
    """Per-layer timings of one architecture on one backend, and what the whole model took."""

    key: str
    backend: str
    device: str
    input_shape: list[int]
    threads: int | None
    layers: dict[str, LayerTiming]
    scale: float = 1.0  # whole-model ms per ms of the layers timed alone (calibrated)
    offset_ms: float = 0.0  # the rest of the model, fixed in every cut (calibrated)
    check: dict = field(default_factory=dict)  # predicted against measured on random cuts
    calibration: dict = field(default_factory=dict)
    version: int = TABLE_VERSION

    @property
    def layers_full_ms(self) -> float:
        return float(sum(t.full for t in self.layers.values()))

    @property
    def full_ms(self) -> float:
        """The whole original model as the table predicts it."""
        return self.offset_ms + self.scale * self.layers_full_ms

    @property
    def remainder_ms(self) -> float:
        """What the layers do not account for: fixed in every cut."""
        return self.offset_ms

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "LatencyTable":
        layers = {name: LayerTiming(**entry) for name, entry in data["layers"].items()}
        return cls(**{**dict(data), "layers": layers})

    def save(self, path: Path) -> Path:
        from detprune.utils.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.as_dict()))
        return path

    @classmethod
    def load(cls, path: Path) -> "LatencyTable":
        try:
            table = cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise BadInputError(f"{path}: not a latency table ({type(err).__name__})") from None
        return table

    def summary(self) -> str:
        text = (f"latency table {self.key[:12]}: {len(self.layers)} layers on {self.backend} ({self.device}), "
                f"whole model {self.full_ms:.2f} ms = {self.scale:.2f} x {self.layers_full_ms:.2f} ms of layers "
                f"+ {self.offset_ms:.2f} ms")
        if self.check.get("cuts"):
            text += (f"; on {self.check['cuts']} random cuts the prediction is off by {self.check['mean_error']:.1%} "
                     f"on average, {self.check['max_error']:.1%} at most")
        return text


# --- which calls the table times, and the key of an architecture ---------------------------------


def call_names(coupled) -> list[tuple[str, object]]:
    """``(entry name, call)`` of every conv / linear call: ``layer#k`` for the k-th call of a layer."""
    seen: dict[str, int] = {}
    out = []
    for call in coupled.calls:
        if not isinstance(call.module, ROOT_TYPES_PRICED):
            continue
        name = coupled.name_of(call.module) if call.module in coupled.graph._module2name else type(call.module).__name__
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append((f"{name}#{k}", call))
    return out


def movable_sides(coupled) -> set[tuple[int, str]]:
    """(node id, side) pairs some prunable group can narrow."""
    out = set()
    for g in coupled.groups:
        prunable = set(g.prunable.tolist())
        for t in g.touches:
            if prunable.intersection(t.positions.tolist()):
                out.add((id(t.node), t.side))
    return out


def fingerprint(coupled) -> list:
    """Layer names and shapes of every timed call: equal for equal architectures."""
    rows = []
    for name, call in call_names(coupled):
        m = call.module
        attrs = [
            type(m).__name__,
            list(getattr(m, "kernel_size", ())),
            list(getattr(m, "stride", ())),
            getattr(m, "groups", 1),
        ]
        rows.append([name, attrs, list(call.input_shape), list(call.output_shape)])
    return rows


def table_key(coupled, backend: str, device: str, input_shape: Sequence[int], threads: int | None,
              points: int = DEFAULT_POINTS, round_to: int = 8, riders: Sequence[str] = ()) -> str:
    payload = {
        "version": TABLE_VERSION, "architecture": fingerprint(coupled), "backend": backend, "device": device,
        "input_shape": [int(d) for d in input_shape], "threads": threads, "points": points, "round_to": round_to,
    }
    if riders:  # timed beside the layers (RoIAlign); absent, the key is what it was before riders existed
        payload["riders"] = list(riders)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_dir(override: str | Path | None = None) -> Path:
    """Where tables live: ``override``, else ``$DETPRUNE_LATENCY_CACHE``, else ``~/.cache/detprune/latency``."""
    if override:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "detprune" / "latency"


def entry_op(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    return "depthwise" if _is_depthwise(module) else "conv"


# --- the table as the knapsack's cost ---------------------------------------------------------------


class LatencyCost(GroupCost):
    """Predicted latency (ms) of a removal: the table's layers at their cut widths plus the remainder.

    ``cost_model`` (:class:`detprune.pruning.flops.CostModel`) maps a removal to each layer's
    widths; savings are priced on the layers the moved group touches only.
    """

    def __init__(self, table: LatencyTable, coupled, cost_model):
        self.table, self.cost_model = table, cost_model
        names = {id(call): name for name, call in call_names(coupled)}
        missing = [n for n in names.values() if n not in table.layers]
        if missing:
            raise BadInputError(
                f"the latency table {table.key[:12]} does not time layer {missing[0]}: built for another architecture"
            )
        self._name = names

    def _moved_ms(self, widths) -> float:
        """Time of the listed calls at the listed widths minus their time at full width; a layer
        with a rider (the RoIAlign feeding it) moves it too, at its input width / the rider's span."""
        total = 0.0
        for call, c_in, c_out in widths:
            name = self._name[id(call)]
            timing = self.table.layers[name]
            total += timing.at(c_in, c_out) - timing.full
            rider = self.table.layers.get(name + RIDER_SUFFIX)
            if rider is not None:
                span = timing.c_in / rider.c_in  # fc6 reads C x 7 x 7 values per RoI
                total += rider.at(c_in / span, c_in / span) - rider.full
        return total

    def __call__(self, removal: Mapping[int, int]) -> float:
        return self.table.full_ms + self.table.scale * self._moved_ms(self.cost_model.layer_widths(dict(removal)))

    def saving(self, removal, group, count):
        before = self.cost_model.layer_widths(dict(removal), group)
        after = self.cost_model.layer_widths({**removal, group: count}, group)
        return self.table.scale * (self._moved_ms(before) - self._moved_ms(after))

    def layers_ms(self, removal: Mapping[int, int]) -> float:
        """The layers alone, timed standalone, at the removal's widths (before calibration)."""
        return self.table.layers_full_ms + self._moved_ms(self.cost_model.layer_widths(dict(removal)))

    def neighbours(self, group):
        return self.cost_model.neighbours(group)

    def fraction(self, removal: Mapping[int, int]) -> float:
        """Predicted latency kept: the removal's time over the full model's."""
        return self(removal) / self.table.full_ms


def group_curves(cost: LatencyCost, coupled, limits) -> dict[int, dict[int, float]]:
    """``{group: {width: ms the group's layers take}}``, the other groups at full width (for reports)."""
    curves = {}
    for g in coupled.prunable_groups():
        widths = limits.allowed_kept(g.size, len(g.prunable))
        curves[g.index] = {
            int(w): float(sum(cost.table.layers[cost._name[id(c)]].at(i, o)
                              for c, i, o in cost.cost_model.layer_widths({g.index: g.size - int(w)}, g.index)))
            for w in widths
        }
    return curves


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    errors = [abs(p - m) / m for p, m in zip(predicted, measured) if m > 0 and math.isfinite(p)]
    return {"cuts": len(errors), "mean_error": float(np.mean(errors)) if errors else None,
            "max_error": float(np.max(errors)) if errors else None}
