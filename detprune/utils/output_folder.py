"""The output-folder rule of every writing run: never replace what it did not write."""

from __future__ import annotations

from pathlib import Path

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
