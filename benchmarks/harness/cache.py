"""Cached results: a folder's ``result.json`` is reused only while the settings stored in it equal the current ones.

``settings_key`` names cache folders (``baseline-<key>``) after a hash of every setting they depend
on. Its output must not change: caches written by earlier runs are found by it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from detprune.utils.atomic import write_text

RESULT = "result.json"


def settings_key(settings: dict) -> str:
    """12 hex digits of the SHA-256 of the settings as sorted-key JSON (stable across runs and machines)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def cached_result(folder: Path, settings: dict, *, mark: bool = False) -> dict | None:
    """The result stored in ``folder`` when it was made with ``settings``; None when absent or made otherwise.

    ``mark`` adds ``"cached": True``, for runners whose progress lines say a row was not recomputed.
    """
    done = Path(folder) / RESULT
    if not done.is_file():
        return None
    stored = json.loads(done.read_text())
    if stored.get("settings") != settings:
        return None
    return {**stored, "cached": True} if mark else stored


def store_result(folder: Path, result: dict) -> dict:
    """Write ``result`` (which carries its ``settings``) to ``folder/result.json`` atomically: an
    interrupted run never leaves half a file that a rerun would have to reject."""
    write_text(Path(folder) / RESULT, json.dumps(result, indent=2) + "\n")
    return result


def cached_run(folder: Path, settings: dict, work: Callable[[], dict]) -> dict:
    """The stored result for ``settings``, else ``{"settings": settings, **work()}``, stored."""
    cached = cached_result(folder, settings)
    if cached is not None:
        return cached
    return store_result(folder, {"settings": settings, **work()})
