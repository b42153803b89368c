"""Progress bars for long work, quiet under CI and pytest unless asked."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False) -> Iterable[T]:
    quiet = disable or os.environ.get("DETPRUNE_QUIET") == "1" or not sys.stderr.isatty() and os.environ.get("CI") == "true"
    return tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)
