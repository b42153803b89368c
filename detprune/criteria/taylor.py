"""First-order Taylor importance of each output channel's weights under the detection loss.

Source: P. Molchanov, A. Mallya, S. Tyree, I. Frosio and J. Kautz, "Importance Estimation
for Neural Network Pruning", CVPR 2019. Removing a parameter ``w`` changes the loss by
about ``g * w`` (``g = dL/dw``); a channel's importance gathers that estimate over the
parameters that vanish with it: the conv's filter and bias for that output channel and,
where a normalisation layer directly follows the conv, its scale and shift for the channel.

Per batch, with ``S_c`` those parameters of channel ``c``::

    reduction="squared" (default):  I_c += sum_{s in S_c} (w_s g_s)^2
    reduction="abs":                I_c += sum_{s in S_c} |w_s g_s|
    reduction="group":              I_c += (sum_{s in S_c} w_s g_s)^2     (the paper's Eq. 7)

accumulated in float64 over the batches. ``L`` is ``adapter.detection_loss``, computed in
train mode with normalisation layers frozen (running statistics are used and never
updated, so scoring leaves the model unchanged); gradients are taken with
``torch.autograd.grad``, so the model's ``.grad`` fields are untouched. The normalisation
layer of a conv is found by tracing the first batch: the one whose input is the conv's
output. ``class_weights`` (``{class name: weight > 0}``) scales each GT box's terms of the
loss by its class's weight (the adapter's ``weighted_detection_loss``; a family without one
is a one-line error), so the parameters the weighted classes' boxes depend on score higher.
Scores depend on the batch size (detection losses normalise over the batch's
targets and the per-batch products are squared), as in the paper.
"""

from __future__ import annotations

from typing import Iterable, Literal, Mapping

import torch
from torch import nn

from detprune.adapters.base import DetectorAdapter
from detprune.criteria.base import ChannelScores, Criterion, register_criterion
from detprune.criteria.class_weights import check_class_weights, model_weight_table, weighted_loss
from detprune.criteria.hooks import model_device, scoring_state, seeded
from detprune.data.batch import Batch
from detprune.errors import DetpruneError
from detprune.utils.progress import progress_bar

Reduction = Literal["squared", "abs", "group"]
REDUCTIONS: tuple[str, ...] = ("squared", "abs", "group")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def channel_dim(layer: nn.Module) -> int:
    """The weight dimension that indexes output channels."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        if layer.groups != 1:
            raise DetpruneError(f"grouped transposed convolutions are not supported by the Taylor criterion ({layer})")
        return 1
    return 0


class NormTracer:
    """Finds, during one forward, the normalisation layer that consumes each conv's output."""

    def __init__(self, model: nn.Module, convs: dict[str, nn.Module]) -> None:
        self.convs = convs
        self.norms = {name: module for name, module in model.named_modules() if isinstance(module, _NORMS)}
        self.outputs: dict[int, tuple[str, torch.Tensor]] = {}
        self.found: dict[str, nn.Module] = {}
        self._handles: list = []

    def __enter__(self) -> "NormTracer":
        for name, conv in self.convs.items():
            self._handles.append(conv.register_forward_hook(self._conv_hook(name)))
        for norm in self.norms.values():
            self._handles.append(norm.register_forward_pre_hook(self._norm_hook(norm)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self.outputs.clear()  # drop the references kept for identity checks

    def _conv_hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self.outputs[id(output)] = (name, output)

        return hook

    def _norm_hook(self, norm: nn.Module):
        def hook(module, inputs):
            entry = self.outputs.get(id(inputs[0])) if inputs else None
            if entry is not None and entry[1] is inputs[0]:
                self.found.setdefault(entry[0], norm)

        return hook


def _channel_terms(param: torch.Tensor, grad: torch.Tensor | None, dim: int) -> torch.Tensor:
    """(C,) per output channel: the products ``w * g`` of that channel, flattened then summed later."""
    product = torch.zeros_like(param) if grad is None else param.detach() * grad
    return product.movedim(dim, 0).reshape(param.shape[dim], -1).to(torch.float64)


@register_criterion
class FirstOrderTaylor(Criterion):
    """First-order Taylor on weights (Molchanov et al., CVPR 2019); see the module docstring."""

    name = "taylor"
    needs_data = True

    def __init__(self, reduction: Reduction = "squared", class_weights: Mapping[str, float] | None = None,
                 seed: int | None = 0, progress: bool = True) -> None:
        if reduction not in REDUCTIONS:
            raise DetpruneError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.class_weights = check_class_weights(class_weights)
        self.seed = seed
        self.progress = progress
        self.norms: dict[str, nn.Module] = {}

    def options(self) -> dict:
        weights = {"class_weights": dict(self.class_weights)} if self.class_weights else {}
        return {"reduction": self.reduction, **weights, "seed": self.seed}

    def _groups(self, convs: dict[str, nn.Module]) -> dict[str, list[tuple[torch.Tensor, int]]]:
        """conv name -> [(parameter, output-channel dim)] of the parameters removed with a channel."""
        groups = {}
        for name, conv in convs.items():
            dim = channel_dim(conv)
            members = [
                (p, dim if p.dim() > 1 else 0) for p in (conv.weight, getattr(conv, "bias", None)) if p is not None
            ]
            norm = self.norms.get(name)
            if norm is not None and getattr(norm, "weight", None) is not None:
                members += [(norm.weight, 0), (norm.bias, 0)]
            groups[name] = members
        return groups

    def _reduce(self, terms: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(terms, dim=1)
        if self.reduction == "squared":
            return stacked.square().sum(1)
        if self.reduction == "abs":
            return stacked.abs().sum(1)
        return stacked.sum(1).square()

    def score(self, adapter: DetectorAdapter, model: nn.Module, batches: Iterable[Batch]) -> ChannelScores:
        points = adapter.activation_points(model)
        if not points:
            raise DetpruneError(f"{type(adapter).__name__}: the model has no prunable layers to score")
        convs = {}
        for name in points:
            try:
                convs[name] = model.get_submodule(name)
            except AttributeError:
                raise DetpruneError(f"Taylor scores weights, but {name!r} is not a module of the model") from None
            if not isinstance(getattr(convs[name], "weight", None), torch.Tensor):
                raise DetpruneError(f"Taylor scores weights, but {name!r} ({type(convs[name]).__name__}) has none")

        table = model_weight_table(self.class_weights, adapter, model, self.name)
        totals: dict[str, torch.Tensor] = {}
        groups = None
        device = model_device(model)
        total = len(batches) if hasattr(batches, "__len__") else None
        with seeded(self.seed, device), scoring_state(model, train=True, parameter_grads=True):
            for batch in progress_bar(batches, total=total, desc="taylor", disable=not self.progress):
                batch = batch.to(device)
                if groups is None:
                    with NormTracer(model, convs) as tracer:
                        loss = weighted_loss(adapter, model, batch, table, self.name)
                    self.norms = {
                        name: norm
                        for name, norm in tracer.found.items()
                        if getattr(norm, "num_features", getattr(norm, "num_channels", None)) == _width(convs[name])
                    }
                    groups = self._groups(convs)
                else:
                    loss = weighted_loss(adapter, model, batch, table, self.name)
                params = list({id(p): p for members in groups.values() for p, _ in members}.values())
                grads = dict(zip(map(id, params), torch.autograd.grad(loss, params, allow_unused=True)))
                for name, members in groups.items():
                    terms = [_channel_terms(p, grads[id(p)], dim) for p, dim in members]
                    value = self._reduce(terms)
                    totals[name] = value if name not in totals else totals[name] + value
        if groups is None:
            raise DetpruneError("the Taylor criterion needs at least one batch of images to score")
        return {name: totals[name] for name in points}


def _width(layer: nn.Module) -> int:
    return layer.weight.shape[channel_dim(layer)]
