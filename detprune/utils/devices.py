"""Torch devices by name, checked: ``--device`` values and the trainers' device strings."""

from __future__ import annotations

from detprune.errors import BadInputError


def resolve_device(name: str | None):
    """The torch device a ``--device`` value names (default: cuda when available), or a one-line error."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise BadInputError(f"--device {name!r}: not a device name (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def trainer_device(device) -> str:
    """A torch device as the trainers take it: ``"cpu"`` or the CUDA index as a string."""
    return "cpu" if device.type == "cpu" else str(device.index or 0)
