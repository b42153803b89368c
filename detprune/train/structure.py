"""The architecture of a (pruned) model, reduced to what fine-tuning must not change.

A pruned model differs from the architecture its yaml describes only in tensor shapes, so
"the structure" is the shape of every parameter and buffer by name. Fine-tuning compares it
before training, inside the trainer and in the saved checkpoints: a trainer that silently
rebuilt the model from its yaml (or loaded the pruned weights into an unpruned model) shows
up as a difference here.
"""

from __future__ import annotations

from torch import nn

from detprune.errors import DetpruneError


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every parameter and floating buffer (BatchNorm statistics included)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    shapes.update(
        {name: tuple(b.shape) for name, b in model.named_buffers() if b.is_floating_point() and b.ndim > 0}
    )
    return shapes


def conv_widths(model: nn.Module) -> dict[str, int]:
    """``{conv name: out_channels}`` of every ``nn.Conv2d``, in module order."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structure_difference(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]) -> str | None:
    """A one-line description of the first difference between two :func:`tensor_shapes`, or None."""
    for name, shape in expected.items():
        if name not in actual:
            return f"tensor {name} {list(shape)} is missing"
        if actual[name] != shape:
            return f"tensor {name} has shape {list(actual[name])} instead of {list(shape)}"
    extra = [name for name in actual if name not in expected]
    if extra:
        return f"unexpected tensor {extra[0]} {list(actual[extra[0]])}"
    return None


def check_same_structure(expected: dict[str, tuple[int, ...]], model: nn.Module, what: str) -> None:
    """Raise if ``model`` does not have exactly the shapes ``expected`` (from :func:`tensor_shapes`)."""
    difference = structure_difference(expected, tensor_shapes(model))
    if difference is not None:
        raise DetpruneError(f"{what} lost the pruned structure: {difference}")
