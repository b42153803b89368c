"""Atomic outputs: write to a temporary sibling, then rename over the target.

An interrupted run leaves either the old file (or nothing) or the complete new one, never
a truncated model, engine or report.
"""

from __future__ import annotations

import contextlib
import os
import stat
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The temporary keeps the target's suffix (or ``suffix``) because some writers
    (torch.onnx, cv2.imwrite, matplotlib) choose a format from it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _as_created(tmp_path, 0o666)  # mkstemp makes 0600: give the mode a plain open() would
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        _as_created(tmp, 0o777)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    if path.exists() and not stat.S_ISLNK(path.lstat().st_mode):
        os.chmod(path, mode & ~_umask())


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def save_torch(obj, target: str | os.PathLike) -> Path:
    """``torch.save`` to ``target`` atomically."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)
