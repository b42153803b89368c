"""Helpers the subcommands share: the ``--device`` flag and compact JSON files."""

from __future__ import annotations

# the library's own, re-exported for the commands
from detprune.utils.devices import resolve_device  # noqa: F401
from detprune.utils.jsonfmt import compact_json  # noqa: F401
from detprune.workflow.datasets import read_class_map  # noqa: F401


def add_loading_arguments(parser, *, weights: bool) -> None:
    """``--trust-checkpoint`` for every command that reads a .pt; with ``weights``, also the flags
    that decide whether a model may start partly or wholly from random weights."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle .pt files that hold objects beyond detprune's and ultralytics' own model classes; this can "
        "run code stored in the file, so only for files you trust (default: refuse them, naming the object)",
    )
    if not weights:
        return
    parser.add_argument(
        "--partial-weights",
        action="store_true",
        help="load a --weights file that matches only part of the model (the rest stays randomly initialised); "
        "not needed for a file with the whole backbone and neck (the head then starts new, e.g. for new classes)",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="allow an architecture yaml or name (YOLO or Faster R-CNN) without weights, i.e. randomly initialised "
        "(default: refuse; 'detprune train' always allows it, training from scratch is what it does)",
    )


# args attribute -> LoadPolicy field; a command without the flag keeps the library's default
LOADING_FLAGS = ("trust_checkpoint", "partial_weights", "random_init")


def loading_policy(args) -> dict:
    """The :class:`detprune.utils.checkpoints.LoadPolicy` fields a command's flags set."""
    return {name: bool(getattr(args, name)) for name in LOADING_FLAGS if hasattr(args, name)}
