"""The output-folder rule every writing command follows: never replace what it did not write."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from detprune.errors import DetpruneError


def check_output_folder(out: Path, exist_ok: bool, marker: str, command: str, source: Path | None = None) -> None:
    """Refuse an existing ``out`` unless ``exist_ok``; even then, refuse a folder without
    ``marker`` (the file ``command`` always writes), and an ``out`` overlapping ``source``."""
    if source is not None:
        src, dst = source.resolve(), out.resolve()
        if dst == src or dst in src.parents or src in dst.parents:
            raise DetpruneError(f"{out}: output overlaps the input {source}; choose another --out")
    if not out.exists():
        return
    if not exist_ok:
        raise DetpruneError(f"{out}: already exists; choose another --out or pass --exist-ok")
    if not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists()):
        raise DetpruneError(f"{out}: exists and was not written by '{command}' (no {marker}); refusing to replace it")


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
