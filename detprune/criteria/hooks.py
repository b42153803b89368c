"""Activation capture for gradient criteria, and the model state they score in.

:class:`GradientCapture` puts a forward hook on every activation point; each forward
output gets a tensor hook that hands ``(name, activation, gradient)`` to a callback the
moment backward reaches it. The callback reduces on the spot, so nothing outlives the
batch's graph and memory stays constant in the number of images.

Weight gradients are never needed for activation saliency, so :func:`scoring_state` turns
``requires_grad`` off on every parameter (backward then skips every weight-gradient
kernel, about half its work). The graph still reaches the activations because the hook
turns the first activation point's output into a leaf that requires grad: nothing upstream
of it is scored, and every path from it to the utility is kept, so ``dU/dA`` is exact.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from detprune.errors import DetpruneError

GradientCallback = Callable[[str, torch.Tensor, torch.Tensor], None]

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class GradientCapture:
    """Call ``on_gradient(name, activation, grad)`` for every activation point's output.

    Use as a context manager around forward and backward; the hooks are removed on exit.
    A module called several times in one forward (a head shared across pyramid levels)
    reports once per call, each with its own resolution. ``calls`` counts forward calls.
    """

    def __init__(self, points: Mapping[str, nn.Module], on_gradient: GradientCallback) -> None:
        self.points = dict(points)
        self.on_gradient = on_gradient
        self.calls: Counter[str] = Counter()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "GradientCapture":
        for name, module in self.points.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            if not torch.is_grad_enabled():
                return None
            if not isinstance(output, torch.Tensor):
                raise DetpruneError(
                    f"activation point {name!r} ({type(module).__name__}) returns {type(output).__name__}, "
                    "not a tensor; the adapter must name a module whose output is the conv's activation"
                )
            replaced = None
            if not output.requires_grad:  # nothing upstream needs a gradient: start the graph here
                output = replaced = output.detach().requires_grad_(True)
            activation = output.detach()
            self.calls[name] += 1
            output.register_hook(lambda grad: self._deliver(name, activation, grad))
            return replaced

        return hook

    def _deliver(self, name: str, activation: torch.Tensor, grad: torch.Tensor) -> None:
        self.on_gradient(name, activation, grad)  # returning None leaves the gradient unchanged


@contextlib.contextmanager
def scoring_state(model: nn.Module, *, train: bool = False, parameter_grads: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in the state scoring needs and restore every flag afterwards.

    ``train=False``: eval mode, so normalisation uses running statistics and each image's
    contribution is independent of the others in its batch. ``train=True``: train mode (for
    losses that need the training head) with every normalisation layer kept in eval mode, so
    running statistics are neither used from the batch nor updated: scoring never changes
    the model. ``parameter_grads`` switches every weight gradient on (Taylor) or off (activation
    saliency: backward then skips the weight-gradient kernels).
    """
    modes = {module: module.training for module in model.modules()}
    grads = {param: param.requires_grad for param in model.parameters()}
    try:
        model.train(train)
        if train:
            for module in model.modules():
                if isinstance(module, _NORM_TYPES):
                    module.eval()
        for param in model.parameters():
            param.requires_grad_(parameter_grads)
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag in grads.items():
            param.requires_grad_(flag)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's generators for the block and restore the caller's random state after."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def out_channels(model: nn.Module, conv_name: str) -> int | None:
    """The output channel count of the named layer, or None when it has no such attribute."""
    try:
        layer = model.get_submodule(conv_name)
    except AttributeError:
        return None
    for attr in ("out_channels", "out_features", "num_features"):
        if isinstance(getattr(layer, attr, None), int):
            return getattr(layer, attr)
    return None
