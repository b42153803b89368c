"""Numbers read from a file or a flag, checked where they are read: type, range, finiteness.

``int("abc")``, ``int(float("inf"))`` and ``int([1, 2])`` fail with three different exceptions deep
inside a run; these helpers turn each into one line that names the field and the range. Image
sizes get an upper bound that names the memory one image would take.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from detprune.errors import BadInputError

# 8192 px a side: one float32 RGB image of 8192 x 8192 is 0.75 GiB before the network's activations
MAX_IMGSZ = 8192


def whole_number(value: Any, what: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]: an int, or a float / numeric string with no fraction (not a bool)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if value.strip() else value
        except ValueError:
            number = value
    elif not isinstance(value, bool) and hasattr(value, "__index__"):  # numpy and torch integers
        number = operator.index(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or (low is not None and number < low) \
            or (high is not None and number > high):
        raise BadInputError(f"{what} must be a whole number{_range(low, high)}, got {_shown(value)}")
    return number


def real_number(value: Any, what: str, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``(low, high]`` with ``low_open``)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = value
    ok = not isinstance(number, bool) and isinstance(number, numbers.Real) and math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number <= high
    if not ok:
        where = "" if low is None and high is None else _range(low, high, low_open)
        raise BadInputError(f"{what} must be a finite number{where}, got {_shown(value)}")
    return float(number)


def image_size(value: Any, what: str = "--imgsz") -> int:
    """One image side in pixels: 1 to :data:`MAX_IMGSZ`, naming the memory a larger one would need."""
    side = whole_number(value, what, low=1)
    if side > MAX_IMGSZ:
        gib = 3 * 4 * side * side / 2**30  # one float32 RGB image, before any activation
        raise BadInputError(
            f"{what} {side} is above the limit of {MAX_IMGSZ}: one {side}x{side} image alone takes {gib:,.1f} GiB "
            "as float32, and the network's activations many times that"
        )
    return side


def _range(low, high, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}" if not low_open else f" above {low:g} and at most {high:g}"
    if low is not None:
        return f" of at least {low:g}" if not low_open else f" above {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
