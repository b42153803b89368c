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


def add_loading_arguments(parser, *, weights: bool) -> None:
    """``--trust-checkpoint`` for every command that reads a .pt; with ``weights``, also the flags
    that decide whether a model may start partly or wholly from random weights."""
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="unpickle .pt files that hold objects beyond detprune's and ultralytics' own model classes; this can "
             "run code stored in the file, so only for files you trust (default: refuse them, naming the object)",
    )
    if not weights:
        return
    parser.add_argument(
        "--partial-weights", action="store_true",
        help="load a --weights file that matches only part of the model (the rest stays randomly initialised); "
             "not needed for a file with the whole backbone and neck (the head then starts new, e.g. for new classes)",
    )
    parser.add_argument(
        "--random-init", action="store_true",
        help="allow a Faster R-CNN given by name without --weights, i.e. randomly initialised (default: refuse)",
    )


# args attribute -> LoadPolicy field; a command without the flag keeps the library's default
LOADING_FLAGS = ("trust_checkpoint", "partial_weights", "random_init")


def loading_policy(args) -> dict:
    """The :class:`detprune.utils.checkpoints.LoadPolicy` fields a command's flags set."""
    return {name: bool(getattr(args, name)) for name in LOADING_FLAGS if hasattr(args, name)}
