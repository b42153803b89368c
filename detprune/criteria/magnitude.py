"""Data-free criteria from the weights alone: filter magnitude and BatchNorm scale.

* ``l1`` / ``l2`` (``magnitude`` = ``l1``): the L1 or L2 norm of each output channel's filter
  (its kernel weights; the bias is not part of the filter). Source: H. Li, A. Kadav, I. Durdanovic, H. Samet and H. P.
  Graf,
  "Pruning Filters for Efficient ConvNets", ICLR 2017, which ranks filters by the sum of
  their absolute weights.
* ``bn-scale`` (alias ``bn``): ``|gamma|`` of the BatchNorm that directly follows the conv.
  Source: Z. Liu, J. Li, Z. Shen, G. Huang, S. Yan and C. Zhang, "Learning Efficient
  Convolutional Networks through Network Slimming", ICCV 2017. The norm that consumes each
  conv's output is found by tracing one forward pass of the adapter's example input. Convs
  with no BatchNorm after them get no score; the pruner then ranks their groups by the other
  layers in them, or leaves them whole.

All score every conv of ``adapter.activation_points(model)`` and need no images.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.data.batch import Batch
from detprune.errors import DetpruneError


def _layers(adapter: DetectorAdapter, model: nn.Module) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    names = list(adapter.activation_points(model))
    missing = [n for n in names if n not in modules or getattr(modules[n], "weight", None) is None]
    if missing:
        raise DetpruneError(f"activation point {missing[0]!r} is not a layer with weights in this model")
    return {n: modules[n] for n in names}


def _filters(layer: nn.Module) -> torch.Tensor:
    """(out_channels, -1): each output channel's kernel weights."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        if layer.groups != 1:
            raise DetpruneError(f"grouped transposed convolutions have no per-filter magnitude ({layer})")
        weight = weight.transpose(0, 1)
    return weight.reshape(weight.shape[0], -1).to(torch.float64).cpu()


class _FilterNorm(Criterion):
    needs_data = False
    p: float = 1.0

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch] = ()) -> ChannelScores:
        return {
            name: torch.linalg.vector_norm(_filters(layer), ord=self.p, dim=1)
            for name, layer in _layers(adapter, model).items()
        }

    def options(self) -> dict:
        return {}


@register_criterion
class L1Magnitude(_FilterNorm):
    """Sum of absolute filter weights (Li et al., ICLR 2017)."""

    name = "l1"
    p = 1.0


@register_criterion
class Magnitude(L1Magnitude):
    """``magnitude``: the L1 filter norm under its common name."""

    name = "magnitude"


@register_criterion
class L2Magnitude(_FilterNorm):
    """Euclidean norm of each filter."""

    name = "l2"
    p = 2.0


@register_criterion
class BatchNormScale(Criterion):
    """``|gamma|`` of the BatchNorm after each conv (network slimming, Liu et al., ICCV 2017)."""

    name = "bn-scale"
    needs_data = False

    def __init__(self, imgsz: int = 64) -> None:
        self.imgsz = imgsz  # the tracing pass only needs the wiring, so a small input will do
        self.unscored: list[str] = []

    def options(self) -> dict:
        return {}

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch] = ()) -> ChannelScores:
        layers = _layers(adapter, model)
        norms = following_batchnorms(model, layers, adapter.example_inputs(model, self.imgsz))
        self.unscored = [n for n in layers if n not in norms]
        if not norms:
            raise DetpruneError("bn-scale: no prunable conv is followed by a BatchNorm layer; use l1 or l2")
        return {n: norms[n].weight.detach().abs().to(torch.float64).cpu() for n in layers if n in norms}


@register_criterion
class BatchNormScaleShort(BatchNormScale):
    """``bn``: ``bn-scale`` under its short name."""

    name = "bn"


def following_batchnorms(model: nn.Module, layers: dict[str, nn.Module], example_inputs) -> dict[str, nn.Module]:
    """Layer name -> the affine BatchNorm whose input is exactly that layer's output."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # tensors kept alive so ids stay unique
    found: dict[str, nn.Module] = {}

    def on_layer(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                outputs[id(output)] = (name, output)
        return hook

    def on_norm(norm, inputs):
        entry = outputs.get(id(inputs[0])) if inputs else None
        if entry is not None and entry[1] is inputs[0]:
            found.setdefault(entry[0], norm)

    handles = [layer.register_forward_hook(on_layer(name)) for name, layer in layers.items()]
    handles += [
        m.register_forward_pre_hook(on_norm)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    width = lambda m: getattr(m, "out_channels", getattr(m, "out_features", None))  # noqa: E731
    return {n: bn for n, bn in found.items() if bn.num_features == width(layers[n])}
