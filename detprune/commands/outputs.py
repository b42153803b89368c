"""The output-folder rule every writing command follows: never replace what it did not write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from detprune.errors import DetpruneError
from detprune.utils.output_folder import check_output_folder  # noqa: F401  (the library's, for the commands)


def check_output_file(out: Path, exist_ok: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an ``out`` that is one of the ``inputs`` (whatever ``exist_ok`` says), a folder,
    or an existing file unless ``exist_ok``."""
    for given in inputs:
        if given is None or not out.exists():
            continue
        path = Path(given)
        if path.exists() and (path.resolve() == out.resolve() or os.path.samefile(path, out)):
            raise DetpruneError(f"{out}: is the input {given}; choose another --out (an input is never overwritten)")
    if out.is_dir():
        raise DetpruneError(f"{out}: is a folder; --out names the file to write")
    if out.exists() and not exist_ok:
        raise DetpruneError(f"{out}: already exists; choose another --out or pass --exist-ok to replace it")
