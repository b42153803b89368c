"""Coupled channel groups, from Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR 2023).

Removing output channel ``i`` of a conv forces the removal of matching channels in every
layer tied to it: its norm, the layers that read it, the other branch of a residual add,
the slice of a concat it lands in. Torch-Pruning traces those ties; this module enumerates
them as *groups*: a root conv and a list of its output channels ("positions"), each
position standing for one coupled set of channels across the network.

For every group we keep

* the convs (and linears) whose OUTPUT channels belong to it, with the channel index each
  position maps to: that is how per-layer criterion scores reduce to one score per position;
* every node the group touches (convs' inputs and outputs, norms, pools, upsampling), which
  the analytic cost model in :mod:`detprune.pruning.flops` needs to predict FLOPs and
  parameters of a candidate without cutting anything;
* which positions are locked: their coupled set reaches the output channels of a protected
  layer (predictors, DFL, attention internals) or a grouped conv Torch-Pruning cannot cut.

Protected layers are excluded at group level, as Torch-Pruning's own pruners do, rather than
passed to ``build_dependency(ignored_layers=...)``: that option removes them from tracing,
after which a protected conv is seen as a channel-preserving element-wise op and the
couplings through it are wrong.

Groups are rooted channel by channel, not layer by layer: a conv whose output is split
between two couplings gets a group for each part, so no channel is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from detprune.errors import UnsupportedError

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class GroupMember:
    """A conv/linear whose output channels are in a group: entry ``k`` is position ``positions[k]``."""

    name: str
    positions: np.ndarray  # int64, positions in the group
    channels: np.ndarray  # int64, this layer's output-channel index for each entry


@dataclass
class NodeTouch:
    """The channels of one graph node a group removes, for each of the group's positions."""

    node: object  # torch_pruning Node
    side: str  # "out": the node's output channels (a norm or pool's only channels), "in": a conv/linear's input
    positions: np.ndarray
    channels: np.ndarray


@dataclass
class ChannelGroup:
    index: int
    root: str  # qualified name of the root conv
    channels: np.ndarray  # root output-channel index of each position (original numbering)
    locked: np.ndarray  # bool per position: must stay
    members: list[GroupMember] = field(default_factory=list)
    touches: list[NodeTouch] = field(default_factory=list)
    lock_reason: str = ""

    @property
    def size(self) -> int:
        return len(self.channels)

    @property
    def prunable(self) -> np.ndarray:
        """Positions that may be removed, in increasing order."""
        return np.flatnonzero(~self.locked)

    @property
    def layer_names(self) -> list[str]:
        return [m.name for m in self.members]


@dataclass
class CallRecord:
    """One forward call of a module Torch-Pruning's counter prices (for the cost model)."""

    module: nn.Module
    grad_fn: object
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    node: object = None  # the graph node of this call's output, once the graph is built


@dataclass
class CoupledGroups:
    """The dependency graph of one model and its channel groups."""

    model: nn.Module
    graph: tp.DependencyGraph
    groups: list[ChannelGroup]
    calls: list[CallRecord]
    batch_size: int

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def name_of(self, module: nn.Module) -> str:
        return self.graph._module2name[module]

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if len(g.prunable)]

    def group_of_layer(self) -> dict[str, list[int]]:
        """Layer name -> indices of the groups holding some of its output channels."""
        out: dict[str, list[int]] = {}
        for g in self.groups:
            for m in g.members:
                out.setdefault(m.name, []).append(g.index)
        return out


def _counted_types() -> tuple[type, ...]:
    from torch_pruning.utils.op_counter import MODULES_MAPPING

    return tuple(MODULES_MAPPING)


def _recording_forward(calls: list[CallRecord], forward_fn=None):
    """A ``forward_fn`` for the graph trace that also records every priced module call.

    Recording during the very trace that builds the graph lets each call be matched to its
    graph node through the autograd function of its output. ``forward_fn(model, inputs)``,
    when an adapter gives one, replaces ``model(inputs)`` (Faster R-CNN traces its dense path).
    """
    counted = _counted_types()

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        first = inputs[0] if inputs else None
        if isinstance(out, torch.Tensor) and out.grad_fn is not None and isinstance(first, torch.Tensor):
            calls.append(CallRecord(module, out.grad_fn, tuple(first.shape), tuple(out.shape)))

    def forward(model: nn.Module, example_inputs):
        handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in counted]
        try:
            if forward_fn is not None:
                return forward_fn(model, example_inputs)
            if isinstance(example_inputs, dict):
                return model(**example_inputs)
            if isinstance(example_inputs, (tuple, list)):
                return model(*example_inputs)
            return model(example_inputs)
        finally:
            for h in handles:
                h.remove()

    return forward


def build_graph(model: nn.Module, example_inputs, forward_fn=None) -> tuple[tp.DependencyGraph, list[CallRecord]]:
    """Trace ``model`` once; its training mode and ``requires_grad`` flags are restored afterwards."""
    calls: list[CallRecord] = []
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # tracing follows autograd: a frozen conv would otherwise vanish from the graph
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs, forward_fn=_recording_forward(calls, forward_fn), verbose=False
            )
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    by_grad_fn = {node.grad_fn: node for node in graph.module2node.values()}
    for call in calls:
        # a module called several times (an RPN head shared by the FPN levels) has one node;
        # only one call's output is that node's grad_fn, the others find it by module
        call.node = by_grad_fn.get(call.grad_fn) or graph.module2node.get(call.module)
        call.grad_fn = None  # matched; the graph keeps what index mapping needs
    return graph, calls


def _check_in_range(graph: tp.DependencyGraph, module: nn.Module, side: str, channels: np.ndarray, root: str) -> None:
    """Refuse a group that maps a channel outside its layer: Torch-Pruning misread an op
    (an unrewritten ``chunk``/``split`` does this) and cutting would corrupt the model."""
    pruner = graph.get_pruner_of_module(module)
    if pruner is None or not len(channels):
        return
    width = pruner.get_out_channels(module) if side == "out" else pruner.get_in_channels(module)
    if width is not None and (channels.min() < 0 or channels.max() >= width):
        name = graph._module2name.get(module, type(module).__name__)
        raise UnsupportedError(
            f"the coupling traced from layer {root} reaches channel {int(channels.max())} of {name}, which has "
            f"{width}: "
            "an op Torch-Pruning cannot follow (chunk/split); run the adapter's prepare_for_pruning first"
        )


def _is_grouped_conv(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups and not (
        module.groups == module.out_channels == module.in_channels
    )


def _side(graph: tp.DependencyGraph, handler) -> str:
    return "out" if graph.is_out_channel_pruning_fn(handler) else "in"


def enumerate_groups(
    model: nn.Module, example_inputs, protected: Iterable[nn.Module] = (), forward_fn=None
) -> CoupledGroups:
    """Build the dependency graph of ``model`` and list its coupled channel groups.

    Groups come in ``model.named_modules()`` order and positions in channel order, so the
    enumeration is deterministic for a given architecture.
    """
    graph, calls = build_graph(model, example_inputs, forward_fn)
    locked_modules = {id(sub) for layer in protected for sub in layer.modules()}
    covered: dict[int, set[int]] = {}
    groups: list[ChannelGroup] = []
    for name, module in model.named_modules():
        if not isinstance(module, ROOT_TYPES) or module not in graph.module2node or id(module) in locked_modules:
            continue  # a protected root's group is locked whole; tracing it (attention reshapes) can be costly
        pruner = graph.get_pruner_of_module(module)
        total = pruner.get_out_channels(module) if pruner is not None else None
        if not total:
            continue
        done = covered.get(id(module), set())
        rest = [i for i in range(total) if i not in done]
        if not rest:
            continue
        try:
            tp_group = graph.get_pruning_group(module, pruner.prune_out_channels, rest)
        except Exception as err:  # Torch-Pruning raises bare IndexError/AssertionError on untraceable ops
            detail = (str(err).strip().splitlines() or [""])[0]
            raise UnsupportedError(
                f"cannot trace the channel coupling of layer {name} ({type(err).__name__}: {detail}); "
                "the adapter's prepare_for_pruning must rewrite the ops Torch-Pruning cannot follow"
            ) from None
        groups.append(_to_channel_group(len(groups), name, rest, tp_group, graph, locked_modules, covered))
    return CoupledGroups(model, graph, groups, calls, _batch_size(example_inputs))


def _batch_size(example_inputs) -> int:
    first = example_inputs
    while isinstance(first, (tuple, list)):
        first = first[0]
    if isinstance(first, dict):
        first = next(iter(first.values()))
    return int(first.shape[0])


def _to_channel_group(
    index: int,
    root: str,
    root_channels: Sequence[int],
    tp_group,
    graph: tp.DependencyGraph,
    locked_modules: set[int],
    covered: dict[int, set[int]],
) -> ChannelGroup:
    position_of = {c: p for p, c in enumerate(root_channels)}
    locked = np.zeros(len(root_channels), dtype=bool)
    reasons: list[str] = []
    members: list[GroupMember] = []
    touches: list[NodeTouch] = []
    for item in tp_group.items:
        node, handler = item.dep.target, item.dep.handler
        positions = np.array([position_of[r] for r in item.root_idxs], dtype=np.int64)
        channels = np.array(item.idxs, dtype=np.int64)
        side = _side(graph, handler)
        module = node.module
        touches.append(NodeTouch(node, side, positions, channels))
        if not isinstance(module, nn.Module):
            continue
        _check_in_range(graph, module, side, channels, root)
        if side == "out" and id(module) in locked_modules:
            locked[positions] = True
            reasons.append(f"{graph._module2name.get(module, module)} is protected")
        if _is_grouped_conv(module):
            locked[positions] = True
            reasons.append(f"{graph._module2name.get(module, module)} is a grouped conv")
        if side == "out" and isinstance(module, ROOT_TYPES):
            covered.setdefault(id(module), set()).update(channels.tolist())
            members.append(GroupMember(graph._module2name[module], positions, channels))
    return ChannelGroup(
        index=index,
        root=root,
        channels=np.asarray(root_channels, dtype=np.int64),
        locked=locked,
        members=members,
        touches=touches,
        lock_reason="; ".join(dict.fromkeys(reasons)),
    )
