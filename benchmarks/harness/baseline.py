"""The cached baseline every benchmark prunes from: one folder layout, trained once per settings.

A baseline lives in ``<out>/cache/baseline-<settings_key(settings)>/``:

- ``settings.json``: what it was trained with, written before training starts, so an interrupted
  folder still says what it is;
- ``baseline.pt``: the trained, pruning-ready model, written last and atomically: its presence is
  what marks the baseline done;
- ``info.json``: the settings again, the per-epoch curve (``None`` where the trainer kept none)
  and the machine seconds it took, resumed runs included.

Each script keeps its own way of training (a fixed split, a fold, a resumable run); this module
only decides whether to train and stores what came out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from detprune.utils.atomic import write_text
from harness.cache import settings_key

CHECKPOINT, INFO, SETTINGS = "baseline.pt", "info.json", "settings.json"


def baseline_folder(out: str | Path, settings: dict) -> Path:
    """Where the baseline of ``settings`` is cached under a benchmark's ``--out``."""
    return Path(out) / "cache" / f"baseline-{settings_key(settings)}"


def load_baseline(adapter, folder: Path, settings: dict) -> tuple[Any, dict] | None:
    """(pruning-ready model, info) of a finished baseline in ``folder``; None while it is not done.

    Folders written before ``info.json`` existed give ``{"settings": settings}`` as their info.
    """
    checkpoint = Path(folder) / CHECKPOINT
    if not checkpoint.is_file():
        return None
    info_path = Path(folder) / INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"settings": settings}
    return adapter.prepare_for_pruning(adapter.load_checkpoint(checkpoint)), info


def cached_baseline(
    adapter,
    folder: Path,
    settings: dict,
    train: Callable[[], tuple[Any, dict]],
    log: Callable[[str], None],
    label: str = "baseline",
) -> tuple[Any, dict]:
    """The baseline cached in ``folder``, else ``train()``'s, stored there.

    ``train()`` returns (model, {"curve": ..., "seconds_before": ...}); ``seconds_before`` is the
    machine time an interrupted run had already spent before this call resumed it.
    """
    folder = Path(folder)
    cached = load_baseline(adapter, folder, settings)
    if cached is not None:
        log(f"{label}: cached {folder / CHECKPOINT}")
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / SETTINGS, json.dumps(settings, indent=2) + "\n")
    tick = time.perf_counter()
    model, trained = train()
    model = adapter.prepare_for_pruning(model)
    info = {"settings": settings, "curve": trained.get("curve"),
            "seconds": time.perf_counter() - tick + trained.get("seconds_before", 0.0)}
    write_text(folder / INFO, json.dumps(info, indent=2) + "\n")
    adapter.save(model, folder / CHECKPOINT, meta={"benchmark_baseline": settings})
    log(f"{label}: trained in {info['seconds']:.0f} s of this machine -> {folder / CHECKPOINT}")
    return model, info
