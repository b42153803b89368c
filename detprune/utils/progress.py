"""Progress bars for long work, quiet under CI and pytest unless asked."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def _quiet(disable: bool) -> bool:
    return (
        disable or os.environ.get("DETPRUNE_QUIET") == "1" or not sys.stderr.isatty() and os.environ.get("CI") == "true"
    )


def progress_bar(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False
) -> Iterable[T]:
    return tqdm(iterable, total=total, desc=desc, disable=_quiet(disable), leave=False, dynamic_ncols=True)


def progress_counter(total: int, *, desc: str = "", initial: int = 0, disable: bool = False) -> tqdm:
    """A bar advanced by hand (``bar.update()``), for work driven by someone else's loop."""
    return tqdm(total=total, initial=initial, desc=desc, disable=_quiet(disable), leave=False, dynamic_ncols=True)
