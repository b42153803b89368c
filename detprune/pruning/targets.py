"""Pruning targets and the search that meets them.

A target is one of

* ``ratio``: the fraction of prunable channels REMOVED (channels of groups that may shrink);
* ``flops``: the fraction of the original FLOPs KEPT (``0.5`` keeps half);
* ``params``: the fraction of the original parameters KEPT.

The allocation is driven by one scalar ``amount`` (see :mod:`detprune.pruning.allocation`)
and every metric is monotone in it, so bisection finds the amount whose result is nearest
the target. Candidates are priced by the analytic cost model (no surgery, no forward pass),
so a search takes milliseconds. A result further than ``tolerance`` (relative, 2% by
default) from the target is refused with the nearest value that can be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from detprune.errors import DetpruneError

KINDS = ("ratio", "flops", "params", "latency")  # latency: predicted by a measured table
DEFAULT_TOLERANCE = 0.02
_FLAG = {"ratio": "ratio", "flops": "target_flops", "params": "target_params", "latency": "target_latency"}
_NAME = {"flops": "FLOPs", "params": "parameters", "latency": "latency (predicted)"}


@dataclass(frozen=True)
class Target:
    kind: str  # "ratio" | "flops" | "params"
    value: float

    @property
    def removes(self) -> bool:
        """Whether the metric grows as more is pruned (a removed fraction) or shrinks (a kept one)."""
        return self.kind == "ratio"

    def describe(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        if self.kind == "ratio":
            return f"{v:.1%} of prunable channels removed"
        return f"{v:.1%} of the original {_NAME[self.kind]} kept"


def check_fraction(name: str, value, *, allow_zero: bool = False, allow_one: bool = False) -> float:
    """A fraction in (0, 1); one-line error otherwise. ``allow_*`` opens an end (internal no-op use)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DetpruneError(f"{name} must be a number in (0, 1), got {value!r}") from None
    low_ok = v > 0 or (allow_zero and v == 0)
    high_ok = v < 1 or (allow_one and v == 1)
    if not (low_ok and high_ok):
        raise DetpruneError(
            f"{name} must lie in (0, 1), got {value!r}"
            + (" (a FLOPs/params target is the fraction KEPT, e.g. 0.5 keeps half)" if name != "ratio" else "")
        )
    return v


def make_target(
    *,
    ratio: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    strict: bool = False,
) -> Target | None:
    """The one target given, validated; ``None`` if none is. ``strict`` refuses the no-op ends 0 and 1."""
    given = {k: v for k, v in (("ratio", ratio), ("flops", target_flops), ("params", target_params)) if v is not None}
    if len(given) > 1:
        raise DetpruneError(
            "give one target: ratio, target_flops or target_params, not " + " and ".join(_FLAG[k] for k in given)
        )
    if not given:
        return None
    kind, value = next(iter(given.items()))
    return Target(kind, check_fraction(_FLAG[kind], value, allow_zero=not strict and kind == "ratio",
                                       allow_one=not strict and kind != "ratio"))


@dataclass(frozen=True)
class SearchResult:
    amount: float
    removal: dict[int, int]
    achieved: float


def search(
    target: Target,
    allocate: Callable[[float], dict[int, int]],
    metric: Callable[[dict[int, int]], float],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    limits_hint: str = "",
    iterations: int = 50,
) -> SearchResult:
    """Bisection over ``amount`` in [0, 1] for the allocation whose ``metric`` is nearest the target."""

    def at(amount: float) -> SearchResult:
        removal = allocate(amount)
        return SearchResult(amount, removal, metric(removal))

    def too_little(r: SearchResult) -> bool:  # not pruned enough yet
        return r.achieved < target.value if target.removes else r.achieved > target.value

    lo, hi = at(0.0), at(1.0)
    if too_little(hi) and not _close(hi.achieved, target.value, tolerance):
        raise DetpruneError(
            f"{_FLAG[target.kind]}={target.value:g} cannot be reached: the most pruning allowed gives "
            f"{target.describe(hi.achieved)}{limits_hint}; closest reachable {_FLAG[target.kind]}={hi.achieved:.3f}"
        )
    if not too_little(lo):
        best = lo
    else:
        for _ in range(iterations):
            if hi.removal == lo.removal or hi.amount - lo.amount < 1e-9:
                break
            mid = at((lo.amount + hi.amount) / 2)
            if too_little(mid):
                lo = mid
            else:
                hi = mid
        best = min((lo, hi), key=lambda r: (abs(r.achieved - target.value), r.amount))
    if not _close(best.achieved, target.value, tolerance):
        other = hi if best is lo else lo
        raise DetpruneError(
            f"{_FLAG[target.kind]}={target.value:g} falls between two reachable steps, "
            f"{_FLAG[target.kind]}={best.achieved:.3f} and {other.achieved:.3f}, neither within "
            f"{tolerance:.0%}; closest reachable {_FLAG[target.kind]}={best.achieved:.3f} (a smaller round_to gives "
            f"finer steps)"
        )
    return best


def _close(achieved: float, wanted: float, tolerance: float) -> bool:
    return abs(achieved - wanted) <= tolerance * abs(wanted) + 1e-12
