"""Helpers the subcommands share: the ``--device`` flag and compact JSON files."""

from __future__ import annotations

import json
import re


def resolve_device(name: str | None):
    """The torch device a ``--device`` value names (default: cuda when available), or a one-line error."""
    import torch

    from detprune.errors import DetpruneError

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise DetpruneError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DetpruneError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def compact_json(data) -> str:
    """Indented JSON with lists of numbers kept on one line (channel index lists are long)."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[[-\d.,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def read_class_map(value):
    """A ``--class-map`` value as the readers take it: a name (``kitti3`` ...) as it is, a .yaml file read."""
    if value is None or not str(value).endswith((".yaml", ".yml")):
        return value
    from pathlib import Path

    from detprune.data.yolo_format import load_yaml

    return load_yaml(Path(value))
