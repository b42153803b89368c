"""Adapters, one per detector family, and the look-up that picks one for a model spec."""

from __future__ import annotations

import importlib
from pathlib import Path

from detprune.adapters.base import DetectorAdapter
from detprune.errors import UnsupportedError

# family -> "module:class"; imported on demand so YOLO users never import R-CNN code and back
_ADAPTERS = {
    "yolo": "detprune.adapters.yolo:YoloAdapter",
    "rcnn": "detprune.adapters.rcnn:RcnnAdapter",
}


def adapter_class(family: str) -> type[DetectorAdapter]:
    module, name = _ADAPTERS[family].split(":")
    return getattr(importlib.import_module(module), name)


def get_adapter(spec: str | Path) -> DetectorAdapter:
    """The adapter for a weights file, architecture yaml or name."""
    for family in _ADAPTERS:
        try:
            cls = adapter_class(family)
        except ImportError:
            continue
        if cls.handles(spec):
            return cls()
    _refuse_damaged(Path(spec))
    raise UnsupportedError(
        f"{spec}: no adapter knows this model; expected an ultralytics YOLO .pt/.yaml "
        "(yolov5*u, yolov8*, yolo11*, yolo26*) or a torchvision fasterrcnn_* name"
    )


def _refuse_damaged(path: Path) -> None:
    """A model file no adapter claims because it cannot be read: say that, not "unknown model"."""
    from detprune.errors import BadInputError
    from detprune.utils.checkpoints import describe_damage

    if path.suffix.lower() in (".pt", ".pth", ".ckpt") and path.is_file():
        damage = describe_damage(path)
        if damage is not None:
            raise BadInputError(f"{path}: cannot read the model file: {damage}")


__all__ = ["DetectorAdapter", "adapter_class", "get_adapter"]
