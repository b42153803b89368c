"""Exact swaps between torchvision's ``FrozenBatchNorm2d`` and ``nn.BatchNorm2d``.

torchvision builds its pretrained detection backbones with ``FrozenBatchNorm2d``: the
affine parameters and running statistics are buffers, so Torch-Pruning (which prunes
``nn.BatchNorm2d`` parameters and buffers) cannot slice them and would treat the layer as a
channel-preserving element-wise op of the wrong width. Before pruning every frozen norm
becomes a ``BatchNorm2d`` carrying the same four vectors and ``eps``; in eval mode both
compute ``(x - mean) / sqrt(var + eps) * weight + bias``, so outputs agree to float rounding.
For fine-tuning with small batches the norms are frozen again (:func:`freeze_batchnorm`),
which is how torchvision fine-tunes its detectors.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d


def _replace_children(module: nn.Module, convert) -> int:
    """Replace, depth first, every descendant ``m`` for which ``convert(m)`` returns a module."""
    count = 0
    for name, child in list(module.named_children()):
        new = convert(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace_children(child, convert)
    return count


def to_batchnorm(frozen: FrozenBatchNorm2d) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` in eval mode with ``frozen``'s statistics, affine terms and ``eps``."""
    weight = frozen.weight
    norm = nn.BatchNorm2d(weight.shape[0], eps=frozen.eps).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(frozen.weight)
        norm.bias.copy_(frozen.bias)
        norm.running_mean.copy_(frozen.running_mean)
        norm.running_var.copy_(frozen.running_var)
    norm.eval()
    return norm


def to_frozen(norm: nn.BatchNorm2d, eps: float | None = None) -> FrozenBatchNorm2d:
    """A ``FrozenBatchNorm2d`` with ``norm``'s statistics and affine terms.

    ``eps`` overrides the norm's own (torchvision's pretrained layouts use 1e-5 throughout,
    even where the classification backbone is built with another value).
    """
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps if eps is None else eps)
    ref = norm.running_mean if norm.running_mean is not None else norm.weight
    frozen = frozen.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if norm.affine:
            frozen.weight.copy_(norm.weight.detach())
            frozen.bias.copy_(norm.bias.detach())
        if norm.track_running_stats:
            frozen.running_mean.copy_(norm.running_mean)
            frozen.running_var.copy_(norm.running_var)
    return frozen


def unfreeze_batchnorm(model: nn.Module) -> int:
    """Replace every ``FrozenBatchNorm2d`` in ``model`` (in place) by an equal ``BatchNorm2d``.

    Returns the number of layers replaced. The new layers are in eval mode; a later
    ``model.train()`` would make them use batch statistics, so fine-tune with
    :func:`freeze_batchnorm` applied (or norms in eval mode).
    """
    return _replace_children(model, lambda m: to_batchnorm(m) if isinstance(m, FrozenBatchNorm2d) else None)


def freeze_batchnorm(model: nn.Module, eps: float | None = None) -> int:
    """Replace every ``nn.BatchNorm2d`` in ``model`` (in place) by an equal ``FrozenBatchNorm2d``.

    Statistics and affine terms stop training; pruned widths are kept. Returns the count.
    """
    return _replace_children(
        model, lambda m: to_frozen(m, eps) if type(m) is nn.BatchNorm2d else None
    )


def count_frozen(model: nn.Module) -> int:
    return sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
